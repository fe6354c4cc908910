"""The 403, 404 and 500 pages: in the site's frame, a sentence saying why, a way back; no link or
button a role cannot use."""

import pytest
from django.urls import path

from config import urls as site_urls
from promotions import services
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db


def _boom(request):
    raise RuntimeError("secret-internal-detail")


# A URL configuration with one failing view and the site's own 500 handler.
urlpatterns = [*site_urls.urlpatterns, path("boom/", _boom)]
handler500 = site_urls.handler500


@pytest.fixture
def production_settings(settings):
    settings.DEBUG = False
    settings.ALLOWED_HOSTS = ["testserver"]
    return settings


@pytest.fixture
def sales():
    return mirror_model(
        "sales_forecast", {3: {"current_stage": "Production"}, 5: {"current_stage": "Staging"}}
    )


def test_a_missing_request_gets_the_framed_404_with_its_reason(client, production_settings, reviewer):
    client.force_login(reviewer)
    response = client.get("/requests/999999/")
    body = response.content.decode()
    assert response.status_code == 404
    assert "Log out" in body and 'class="frame' in body  # the site's frame
    assert "No such request." in body
    assert 'href="/">Back to the queue' in body


def test_an_unknown_address_says_so_without_the_routes_tried(client, production_settings, reviewer):
    client.force_login(reviewer)
    response = client.get("/no/such/page/")
    body = response.content.decode()
    assert response.status_code == 404
    assert "Nothing lives at this address" in body
    assert "tried" not in body and "urlpatterns" not in body


def test_a_refusal_gets_the_framed_403_with_its_reason(client, production_settings, auditor):
    client.force_login(auditor)
    response = client.get("/requests/new/")
    body = response.content.decode()
    assert response.status_code == 403
    assert "Log out" in body and "You may not do this" in body
    assert "Only requesters, reviewers and stage admins file promotion requests." in body
    assert 'href="/">Back to the queue' in body


def test_a_refusal_to_htmx_lands_in_the_message_area_not_inside_a_fragment(client, auditor):
    client.force_login(auditor)
    response = client.get("/requests/new/", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 403
    assert response["HX-Retarget"] == "#messages" and response["HX-Reswap"] == "innerHTML"
    assert "<html" not in body and 'role="alert"' in body
    assert "Only requesters, reviewers and stage admins" in body


def test_bad_input_to_htmx_lands_in_the_message_area(client, reviewer):
    client.force_login(reviewer)
    response = client.get("/?model=" + "x" * 300, HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    assert response["HX-Retarget"] == "#messages"
    assert "<html" not in response.content.decode()


@pytest.mark.urls("tests.test_error_pages")
def test_a_server_error_gets_the_framed_500_without_details(client, production_settings, reviewer):
    client.raise_request_exception = False
    client.force_login(reviewer)
    response = client.get("/boom/")
    body = response.content.decode()
    assert response.status_code == 500
    assert 'class="frame' in body and "Something went wrong on our side" in body
    assert 'href="/">Back to the queue' in body
    assert "secret-internal-detail" not in body and "Traceback" not in body


def test_the_500_page_needs_no_database(rf, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = site_urls.handler500(rf.get("/"))
    assert response.status_code == 500


def test_an_auditor_sees_no_request_promotion_link(client, auditor, sales):
    client.force_login(auditor)
    for url in ("/", "/models/sales_forecast/"):
        body = client.get(url).content.decode()
        assert "Request promotion" not in body, url
        assert "/requests/new/" not in body, url


def test_a_requester_sees_the_request_promotion_links(client, requester, sales):
    client.force_login(requester)
    for url in ("/", "/models/sales_forecast/"):
        assert "/requests/new/" in client.get(url).content.decode(), url


def test_a_stale_page_acting_on_a_cancelled_request_gets_the_reason_in_place(
    client, requester, reviewer, sales
):
    promotion = services.promotion_request_create(
        version=version(sales, 5), stage=stage("Production"), requested_by=requester, justification="Q3"
    )
    services.request_cancel(request=promotion, user=requester)
    client.force_login(reviewer)
    response = client.post(
        f"/requests/{promotion.pk}/decide/",
        {"decision": "approve", "comment": "", "evidence_sha256": promotion.evidence_sha256},
        HTTP_HX_REQUEST="true",
    )
    body = response.content.decode()
    assert response.status_code in (200, 409, 422)
    assert 'id="request-panel"' in body and 'role="alert"' in body
    assert "cancelled" in body.lower()
