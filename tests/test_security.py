"""CSRF for htmx, security headers, lockout after failed sign-ins — each audited."""

import pytest
from django.test import Client

from promotions import services
from promotions.models import AuditEvent, Review
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db


@pytest.fixture
def pending(requester):
    model = mirror_model(versions={1: {"current_stage": "None"}})
    return services.promotion_request_create(
        version=version(model, 1), stage=stage("Staging"), requested_by=requester, justification="go"
    )


def test_an_htmx_post_without_the_csrf_token_is_refused(reviewer, pending):
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    response = client.post(f"/requests/{pending.pk}/decide/", {"decision": "approve"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 403
    assert not Review.objects.exists()


def test_the_token_from_hx_headers_is_accepted(reviewer, pending):
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    page = client.get(f"/requests/{pending.pk}/").content.decode()
    token = page.split('hx-headers=\'{"x-csrftoken": "', 1)[1].split('"', 1)[0]
    response = client.post(
        f"/requests/{pending.pk}/decide/",
        {"decision": "approve"},
        HTTP_HX_REQUEST="true",
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 200
    assert Review.objects.count() == 1


@pytest.mark.parametrize("url", ["/", "/models/", "/stages/", "/accounts/login/"])
def test_every_page_sends_a_strict_csp_and_denies_framing(client, requester, url):
    client.force_login(requester)
    response = client.get(url)
    csp = response["Content-Security-Policy"]
    script = next(part for part in csp.split(";") if part.strip().startswith("script-src"))
    assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script
    assert "frame-ancestors 'none'" in csp
    assert response["X-Frame-Options"] == "DENY"


def test_pages_carry_no_inline_script_or_style(client, reviewer, pending):
    client.force_login(reviewer)
    for url in ["/", f"/requests/{pending.pk}/", "/requests/new/", "/models/", "/stages/"]:
        body = client.get(url).content.decode()
        assert "style=" not in body, url
        assert "<script>" not in body and " hx-on" not in body, url


def test_repeated_failed_logins_lock_the_account_and_are_audited(client, requester, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "riley", "password": "wrong"})
    response = client.post("/accounts/login/", {"username": "riley", "password": "pw-riley"})
    assert response.status_code in (403, 429)
    assert AuditEvent.objects.filter(action="auth.login_failed").count() == 1
    locked = AuditEvent.objects.get(action="auth.locked_out")
    assert locked.details["earlier_failures"] == settings.AXES_FAILURE_LIMIT - 1
    assert client.get("/").status_code == 302  # still not signed in
