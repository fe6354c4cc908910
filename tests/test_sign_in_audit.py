"""Anonymous traffic cannot grow the audit log without bound; a proxy cannot be impersonated."""

import pytest
from django.utils import timezone

from promotions.models import AuditEvent, SignInFailureTally

pytestmark = pytest.mark.django_db


def fail(client, username: str, **headers):
    return client.post("/accounts/login/", {"username": username, "password": "wrong"}, **headers)


def test_fifty_failures_for_one_name_and_address_leave_two_entries(client, requester, settings):
    for _ in range(50):
        fail(client, "riley")
    assert AuditEvent.objects.filter(action="auth.login_failed").count() == 1
    assert AuditEvent.objects.filter(action="auth.locked_out").count() == 1
    assert SignInFailureTally.objects.get(username="riley").failures >= settings.AXES_FAILURE_LIMIT


def test_one_address_trying_many_names_is_recorded_for_the_first_few(client, settings):
    settings.SIGN_IN_AUDIT_NAMES_PER_ADDRESS = 5
    for number in range(40):
        fail(client, f"guess{number}")
    failed = AuditEvent.objects.filter(action="auth.login_failed")
    assert failed.count() == 5 + 1
    assert failed.order_by("sequence").last().details["username"] == "*"


def test_a_new_window_records_again_with_the_last_windows_count(client):
    for _ in range(3):
        fail(client, "riley")
    SignInFailureTally.objects.update(window_started_at=timezone.now() - timezone.timedelta(days=1))
    fail(client, "riley")
    entries = list(AuditEvent.objects.filter(action="auth.login_failed").order_by("sequence"))
    assert len(entries) == 2
    assert entries[1].details["failures_in_previous_window"] == 3


def test_behind_a_trusted_proxy_one_client_cannot_lock_out_another(client, requester, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    # The attacker writes a left-hand entry of its own; the proxy appends the real address.
    attacker = {"HTTP_X_FORWARDED_FOR": "10.9.9.9, 203.0.113.5"}
    for _ in range(settings.AXES_FAILURE_LIMIT + 2):
        fail(client, "riley", **attacker)
    assert AuditEvent.objects.get(action="auth.locked_out").details["ip_address"] == "203.0.113.5"
    response = client.post(
        "/accounts/login/",
        {"username": "riley", "password": "pw-riley"},
        HTTP_X_FORWARDED_FOR="198.51.100.7",
    )
    assert response.status_code == 302, response.status_code
