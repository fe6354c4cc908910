"""/healthz reports the database, the broker and MLflow; 200 only when all answer."""

import pytest
from django.utils import timezone

from bench.common import free_port
from promotions.models import WorkerHeartbeat


@pytest.mark.django_db
def test_it_is_ok_when_everything_answers(client, registry):
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert body == {"status": "ok", "database": "ok", "broker": "ok", "mlflow": "ok"}


@pytest.mark.django_db
def test_it_says_which_part_is_down(client, settings):
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 503
    assert body["database"] == "ok"
    assert body["mlflow"].startswith("error: MLflow at http://127.0.0.1:")
    assert "not answering" in body["mlflow"]


@pytest.mark.django_db
def test_it_needs_no_login(client):
    response = client.get("/healthz")
    assert response.status_code in (200, 503)
    assert response["Content-Type"] == "application/json"


@pytest.mark.django_db
def test_pages_still_render_when_mlflow_is_down(client, settings, requester):
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"
    from registry_sync.models import SyncRun
    from registry_sync.services import SyncFailed, sync_registry

    with pytest.raises(SyncFailed):
        sync_registry(trigger=SyncRun.Trigger.COMMAND)
    client.force_login(requester)
    response = client.get("/")
    assert response.status_code == 200
    assert "MLflow is not answering" in response.content.decode()


@pytest.mark.django_db
def test_it_reports_the_worker_heartbeat_and_when_it_went_stale(client, settings, registry):
    assert client.get("/healthz").json()["worker"] == "never seen"
    WorkerHeartbeat.objects.create(marker="beat", worker="w1", seen_at=timezone.now())
    assert client.get("/healthz").json()["worker"] == "ok"
    stale = timezone.now() - timezone.timedelta(seconds=3 * settings.HEARTBEAT_INTERVAL_SECONDS + 5)
    WorkerHeartbeat.objects.filter(marker="beat").update(seen_at=stale)
    assert client.get("/healthz").json()["worker"].startswith("stale: last heartbeat")
