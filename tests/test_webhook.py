"""POST /hooks/mlflow/: MLflow's signed webhooks trigger a sync of the model they name."""

import json
import time
import uuid

import pytest

from bench.common import wait_until
from registry_sync.models import ModelVersion, WebhookDelivery
from registry_sync.webhooks import sign
from tests.registry_helpers import make_version

SECRET = "whsec-test"
URL = "/hooks/mlflow/"


def deliver(client, body: bytes, *, secret=SECRET, delivery_id=None, timestamp=None, signature=None, drop=()):
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(int(time.time())) if timestamp is None else str(timestamp)
    headers = {
        "HTTP_X_MLFLOW_DELIVERY_ID": delivery_id,
        "HTTP_X_MLFLOW_TIMESTAMP": timestamp,
        "HTTP_X_MLFLOW_SIGNATURE": signature or sign(secret, delivery_id, timestamp, body),
    }
    for name in drop:
        headers.pop(name)
    return client.post(URL, body, content_type="application/json", **headers)


def payload(name="sales_forecast"):
    return json.dumps(
        {
            "entity": "model_version",
            "action": "created",
            "timestamp": "now",
            "data": {"name": name, "version": "1"},
        }
    ).encode()


@pytest.fixture
def secret(settings):
    settings.MLFLOW_WEBHOOK_SECRET = SECRET


@pytest.mark.django_db
def test_a_signed_fresh_delivery_is_accepted(client, secret):
    response = deliver(client, payload())
    assert response.status_code == 202
    assert WebhookDelivery.objects.filter(model_name="sales_forecast").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"signature": "v1,AAAA"}, "bad signature"),
        ({"secret": "another-secret"}, "bad signature"),
        ({"drop": ("HTTP_X_MLFLOW_SIGNATURE",)}, "missing"),
        ({"drop": ("HTTP_X_MLFLOW_DELIVERY_ID",)}, "missing"),
        ({"timestamp": int(time.time()) - 301}, "stale"),
        ({"timestamp": "yesterday"}, "not a Unix timestamp"),
    ],
)
def test_a_bad_missing_or_stale_signature_is_refused(client, secret, kwargs, reason):
    response = deliver(client, payload(), **kwargs)
    assert response.status_code == 401
    assert reason in response.json()["message"]
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db
def test_a_replayed_delivery_is_refused(client, secret):
    delivery_id = str(uuid.uuid4())
    body = payload()
    assert deliver(client, body, delivery_id=delivery_id).status_code == 202
    response = deliver(client, body, delivery_id=delivery_id)
    assert response.status_code == 401
    assert "replayed" in response.json()["message"]
    assert WebhookDelivery.objects.count() == 1


@pytest.mark.django_db
def test_webhooks_are_refused_when_no_secret_is_configured(client, settings):
    settings.MLFLOW_WEBHOOK_SECRET = ""
    response = deliver(client, payload())
    assert response.status_code == 401
    assert "disabled" in response.json()["message"]


@pytest.mark.django_db
@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"data": {"name": 5}}', b"[]"])
def test_a_malformed_body_gets_400(client, secret, body):
    response = deliver(client, body)
    assert response.status_code == 400
    assert not WebhookDelivery.objects.exists()


@pytest.mark.django_db
def test_get_is_not_allowed(client):
    assert client.get(URL).status_code == 405


def test_a_delivery_syncs_just_the_named_model(client, registry, celery_worker, model_name, settings):
    settings.MLFLOW_WEBHOOK_SECRET = SECRET
    client_ = registry.client()
    version = make_version(client_, model_name, metrics={"accuracy": 0.9})
    make_version(client_, f"{model_name}_other")

    assert deliver(client, payload(model_name)).status_code == 202

    wait_until(
        lambda: ModelVersion.objects.filter(model__name=model_name, version=version).exists(),
        timeout=60,
        message=f"the webhook sync\n{celery_worker.log()[-2000:]}",
    )
    assert not ModelVersion.objects.filter(model__name=f"{model_name}_other").exists()
