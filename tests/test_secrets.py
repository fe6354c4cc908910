"""No credential is ever shown: not on a page, in an API answer, /healthz, a log line, a
request's last error, a sync run or the audit log — with every service broken in turn.

Credentials sit where deployments put them: in the MLflow URL's userinfo, MLflow's own token
and password variables, the broker URL, a webhook endpoint's URL.
"""

from __future__ import annotations

import logging

import pytest
from django.test import Client
from django.utils import timezone

from common.redact import redact
from promotions import notifications, services, tokens
from promotions.models import AuditEvent, OutboundDelivery, PromotionRequest, WebhookEndpoint
from registry_sync.models import SyncRun
from registry_sync.services import SyncFailed, sync_registry
from tests.apply_helpers import approved_request, registry_with_production
from tests.conftest import broker_unreachable, free_port, make_user

pytestmark = pytest.mark.django_db

URL_PASSWORD = "mlflow-url-pw-5ecret"
TOKEN = "mlflow-token-5ecret"
ENV_PASSWORD = "mlflow-env-pw-5ecret"
BROKER_PASSWORD = "broker-pw-5ecret"
HOOK_PASSWORD = "hook-pw-5ecret"
SECRETS = (URL_PASSWORD, TOKEN, ENV_PASSWORD, BROKER_PASSWORD, HOOK_PASSWORD)


def with_credentials(url: str) -> str:
    return url.replace("http://", f"http://deploy-bot:{URL_PASSWORD}@", 1)


@pytest.fixture
def mlflow_secrets(monkeypatch):
    # MLflow's client reads these itself; a token makes it send `Authorization: Bearer`.
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ENV_PASSWORD)


@pytest.fixture
def staff(db):
    return make_user("stella", is_staff=True)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked in: …{text[max(0, text.find(secret) - 200) :][:400]}…"


def audit_text() -> str:
    return "".join(f"{e.meaning} {e.details}" for e in AuditEvent.objects.all())


def pages(client: Client, *urls: str) -> str:
    bodies = []
    for url in urls:
        response = client.get(url)
        assert response.status_code in (200, 503), (url, response.status_code)
        bodies.append(response.content.decode())
    return "\n".join(bodies)


def test_mlflow_credentials_never_show_when_mlflow_is_down(
    client, settings, mlflow_secrets, caplog, staff, requester
):
    settings.MLFLOW_TRACKING_URI = with_credentials(f"http://127.0.0.1:{free_port()}")
    caplog.set_level(logging.INFO)

    with pytest.raises(SyncFailed):
        sync_registry(trigger=SyncRun.Trigger.COMMAND)

    run = SyncRun.objects.get()
    assert "MLflow at http://127.0.0.1:" in run.error  # still says where: the host, never userinfo
    client.force_login(requester)
    banner = pages(client, "/", "/models/", "/stages/")
    assert "MLflow is not answering" in banner
    client.force_login(staff)
    health = pages(client, "/healthz")
    assert "not answering" in health
    anonymous = pages(Client(), "/healthz")
    for text in (run.error, banner, health, anonymous, caplog.text, audit_text()):
        assert_no_secret(text)


@pytest.mark.parametrize("mode", ["deny", "down"])
def test_mlflow_credentials_never_reach_a_failed_request_or_the_audit_log(
    mode, mlflow_proxy, registry, model_name, settings, mlflow_secrets, caplog, requester, reviewer, reviewer2
):
    settings.PROMOTION_MAX_ATTEMPTS = 1
    settings.MLFLOW_TRACKING_URI = with_credentials(mlflow_proxy.url)
    caplog.set_level(logging.INFO)
    registry_with_production(registry.client(), model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    mlflow_proxy.mode = mode

    assert services.promotion_apply(request_id=request.pk) == "failed"

    request.refresh_from_db()
    assert request.status == PromotionRequest.Status.FAILED
    assert "MLflow at http://127.0.0.1:" in request.last_error
    failed = AuditEvent.objects.get(action="promotion.failed", request_id=request.pk)
    assert "MLflow at http://127.0.0.1:" in failed.meaning
    browser = Client()
    browser.force_login(requester)
    page = pages(browser, f"/requests/{request.pk}/", "/", f"/models/{model_name}/")
    assert "Failed:" in page
    _, raw = tokens.api_token_create(user=requester, name="ci")
    api = Client(headers={"Authorization": f"Bearer {raw}"})
    answer = api.get(f"/api/requests/{request.pk}")
    assert answer.status_code == 200 and answer.json()["last_error"]
    assert request.last_error_detail  # MLflow's own text is kept, for the page's Details
    for text in (
        request.last_error,
        request.last_error_detail,
        audit_text(),
        page,
        answer.content.decode(),
        caplog.text,
    ):
        assert_no_secret(text)


def test_a_broker_password_never_shows_when_the_broker_is_down(
    client, registry, settings, caplog, staff, requester, reviewer, reviewer2, model_name
):
    url = f"redis://:{BROKER_PASSWORD}@127.0.0.1:{free_port()}/0"
    settings.CELERY_BROKER_URL = url
    caplog.set_level(logging.INFO)
    registry_with_production(registry.client(), model_name)
    with broker_unreachable(url):
        # The last approval publishes the apply task: the broker refuses, the approval stands.
        approved_request(model_name, requester, [reviewer, reviewer2])
        client.force_login(staff)
        health = client.get("/healthz")
        anonymous = Client().get("/healthz")
    assert health.status_code == 503 and health.json()["broker"].startswith("error: ")
    assert anonymous.json() == {"status": "degraded"}
    for text in (health.content.decode(), caplog.text, audit_text()):
        assert_no_secret(text)


def test_a_webhook_endpoints_credentials_never_reach_its_delivery_errors(requester, caplog):
    # http.client reads "deploy:pw@127.0.0.1" as host and port, and quotes the "port" back.
    WebhookEndpoint.objects.create(
        name="chat",
        url=f"http://deploy:{HOOK_PASSWORD}@127.0.0.1/hook",
        secret="hook-signing-5ecret",
        events=list(notifications.WEBHOOK_EVENTS),
    )
    delivery = OutboundDelivery.objects.create(
        endpoint=WebhookEndpoint.objects.get(),
        event="request.created",
        payload={"text": "hello"},
        delivery_id="d-1",
        created_at=timezone.now(),
    )

    attempt = notifications.webhook_deliver(delivery_pk=delivery.pk)

    delivery.refresh_from_db()
    assert attempt.error and delivery.last_error == attempt.error
    for text in (delivery.last_error, caplog.text):
        assert_no_secret(text)
        assert "hook-signing-5ecret" not in text


def test_every_log_line_is_redacted(settings, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    settings.MLFLOW_WEBHOOK_SECRET = "webhook-5ecret-value"
    settings.EMAIL_HOST_PASSWORD = "smtp-5ecret-value"
    logger = logging.getLogger("promotions.anything")
    caplog.set_level(logging.INFO)

    logger.warning("broker at %s", f"amqp://app:{BROKER_PASSWORD}@rabbit:5672//")
    logger.info("MLflow token %s, webhook %s", TOKEN, settings.MLFLOW_WEBHOOK_SECRET)
    try:
        raise ConnectionError(f"cannot log in to smtp with {settings.EMAIL_HOST_PASSWORD}")
    except ConnectionError:
        logger.exception("mail failed")

    assert "amqp://***@rabbit:5672//" in caplog.text
    assert "smtp" in caplog.text and "ConnectionError" in caplog.text
    for secret in (BROKER_PASSWORD, TOKEN, "webhook-5ecret-value", "smtp-5ecret-value"):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:pass@mlflow.example.com/api", "https://***@mlflow.example.com/api"),
        ("redis://:pw@cache:6379/0 is down", "redis://***@cache:6379/0 is down"),
        ("'amqp://guest:guest@rabbit//'", "'amqp://***@rabbit//'"),
        ("postgres://app:s3cret@db:5432/promotions", "postgres://***@db:5432/promotions"),
        ("sqla+sqlite:////var/celery.sqlite3", "sqla+sqlite:////var/celery.sqlite3"),
        ("mail ops@example.com about http://host/x", "mail ops@example.com about http://host/x"),
    ],
)
def test_redact_removes_the_userinfo_of_any_url(text, expected):
    assert redact(text) == expected


def test_redact_removes_every_configured_secret(settings, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ENV_PASSWORD)
    monkeypatch.setitem(settings.DATABASES["default"], "PASSWORD", "db-pw-5ecret")
    settings.CELERY_BROKER_URL = f"redis://:{BROKER_PASSWORD}@cache:6379/0"
    settings.MLFLOW_TRACKING_URI = "https://bot:p%40ss-5ecret@mlflow.example.com"
    settings.SECRET_KEY = "django-secret-key-5ecret"
    settings.MLFLOW_WEBHOOK_SECRET = "webhook-5ecret"
    settings.EMAIL_HOST_PASSWORD = "smtp-5ecret"
    settings.HEALTHZ_TOKEN = "healthz-5ecret"
    values = [
        TOKEN,
        ENV_PASSWORD,
        "db-pw-5ecret",
        BROKER_PASSWORD,
        "p@ss-5ecret",
        "p%40ss-5ecret",
        "django-secret-key-5ecret",
        "webhook-5ecret",
        "smtp-5ecret",
        "healthz-5ecret",
    ]
    text = redact("; ".join(f"value {value} here" for value in values))
    assert text == "; ".join("value *** here" for _ in values)
