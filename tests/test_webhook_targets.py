"""Outbound webhooks cannot reach the inside: refused when saved and again at every delivery."""

import json

import pytest

from promotions.models import AuditEvent, WebhookEndpoint
from tests.test_notifications import SECRET

pytestmark = pytest.mark.django_db

ADD = "/admin/promotions/webhookendpoint/add/"


@pytest.fixture
def guarded(settings):
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False


@pytest.fixture
def admin_client(client, stage_admin):
    client.force_login(stage_admin)
    return client


def add(admin_client, url, secret=SECRET):
    return admin_client.post(
        ADD, {"name": "hook", "url": url, "secret": secret, "events": ["request.created"], "is_active": "on"}
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://172.16.5.4/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fd12:3456::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "ftp://example.com/",
        "file:///etc/passwd",
        "http://user:pw@hooks.example.com/",
    ],
)
def test_an_endpoint_inside_the_network_is_refused_when_saved(admin_client, guarded, url):
    response = add(admin_client, url)
    assert response.status_code == 200, url
    assert not WebhookEndpoint.objects.exists()
    assert "errorlist" in response.content.decode()


@pytest.mark.parametrize("url", ["https://hooks.example.com/T000", "http://93.184.216.34/hook"])
def test_a_public_endpoint_is_accepted(admin_client, guarded, url):
    assert add(admin_client, url).status_code == 302
    assert WebhookEndpoint.objects.get().url == url


def test_the_secret_is_never_rendered_and_an_empty_field_keeps_it(admin_client, guarded):
    assert add(admin_client, "https://hooks.example.com/T000?token=query-token-123").status_code == 302
    hook = WebhookEndpoint.objects.get()
    page = admin_client.get(f"/admin/promotions/webhookendpoint/{hook.pk}/change/").content.decode()
    assert SECRET not in page
    response = admin_client.post(
        f"/admin/promotions/webhookendpoint/{hook.pk}/change/",
        {"name": "renamed", "url": hook.url, "secret": "", "events": ["request.created"], "is_active": "on"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    hook.refresh_from_db()
    assert (hook.name, hook.secret) == ("renamed", SECRET)
    changed = AuditEvent.objects.get(action="webhook.changed")
    assert changed.details["changed"] == ["name"]


def test_the_audit_log_names_the_host_not_the_url(admin_client, guarded):
    add(admin_client, "https://hooks.example.com/T000?token=query-token-123")
    WebhookEndpoint.objects.get().delete()
    for event in AuditEvent.objects.filter(action__startswith="webhook."):
        text = json.dumps(event.details) + event.meaning
        assert "query-token-123" not in text and "/T000" not in text
    assert AuditEvent.objects.get(action="webhook.created").details["host"] == "hooks.example.com"
