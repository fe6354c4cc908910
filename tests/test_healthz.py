"""/healthz: ok or degraded for anyone; which part and why only for staff or the health token.

The database, the broker and MLflow decide 200 or 503; the worker heartbeat is reported beside
them. One round of checks serves every caller for HEALTHZ_CACHE_SECONDS.
"""

import pytest
from django.test import Client
from django.utils import timezone

from promotions.models import WorkerHeartbeat
from registry_sync.models import SyncRun
from registry_sync.services import SyncFailed, sync_registry
from tests.conftest import broker_unreachable, free_port, make_user

pytestmark = pytest.mark.django_db
DETAILS = {"database", "broker", "mlflow", "worker"}


@pytest.fixture
def staff_client(db):
    client = Client()
    client.force_login(make_user("stella", is_staff=True))
    return client


def test_a_stranger_learns_only_that_it_is_ok(client, registry):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_a_stranger_learns_only_that_it_is_degraded(client, settings):
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "degraded"}


def test_it_needs_no_login(client):
    response = client.get("/healthz")
    assert response.status_code in (200, 503)
    assert response["Content-Type"] == "application/json"


def test_staff_see_every_part(staff_client, registry):
    response = staff_client.get("/healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert body == {"status": "ok", "database": "ok", "broker": "ok", "mlflow": "ok", "worker": "never seen"}


def test_a_signed_in_user_who_is_not_staff_sees_no_details(client, requester, registry):
    client.force_login(requester)
    assert client.get("/healthz").json() == {"status": "ok"}


def test_the_health_token_shows_the_details(client, registry, settings):
    settings.HEALTHZ_TOKEN = "probe-token-123"
    response = client.get("/healthz", headers={"Authorization": "Bearer probe-token-123"})
    assert set(response.json()) == {"status", *DETAILS}


@pytest.mark.parametrize("header", ["Bearer wrong-token", "Bearer ", "probe-token-123", "Basic cHJvYmU="])
def test_a_wrong_or_malformed_token_shows_nothing(client, registry, settings, header):
    settings.HEALTHZ_TOKEN = "probe-token-123"
    assert client.get("/healthz", headers={"Authorization": header}).json() == {"status": "ok"}


def test_no_token_opens_the_details_when_none_is_configured(client, registry, settings):
    settings.HEALTHZ_TOKEN = ""
    assert client.get("/healthz", headers={"Authorization": "Bearer "}).json() == {"status": "ok"}


def test_it_says_which_part_is_down(staff_client, settings):
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"
    response = staff_client.get("/healthz")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "degraded" and body["database"] == "ok"
    assert body["mlflow"].startswith("error: MLflow at http://127.0.0.1:")
    assert "not answering" in body["mlflow"]


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_a_sqlite_broker_that_cannot_be_opened_is_degraded(staff_client, registry, tmp_path, where):
    path = tmp_path / "no-such-dir" / "celery.sqlite3" if where == "missing-dir" else tmp_path
    with broker_unreachable(f"sqla+sqlite:///{path}"):
        response = staff_client.get("/healthz")
    body = response.json()
    assert response.status_code == 503, body
    assert body["status"] == "degraded" and body["broker"].startswith("error: ")
    assert body["mlflow"] == "ok"


def test_a_redis_broker_that_does_not_answer_is_degraded(staff_client, registry):
    with broker_unreachable(f"redis://127.0.0.1:{free_port()}/0"):
        response = staff_client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["broker"].startswith("error: ")


def test_a_flood_of_checks_asks_mlflow_once(client, mlflow_proxy, settings):
    settings.HEALTHZ_CACHE_SECONDS = 5
    before = len(mlflow_proxy.calls)
    answers = {client.get("/healthz").status_code for _ in range(20)}
    assert answers == {200}
    assert len(mlflow_proxy.calls) - before == 1


def test_with_no_cache_every_check_asks_again(client, mlflow_proxy, settings):
    settings.HEALTHZ_CACHE_SECONDS = 0
    before = len(mlflow_proxy.calls)
    for _ in range(3):
        client.get("/healthz")
    assert len(mlflow_proxy.calls) - before == 3


def test_pages_still_render_when_mlflow_is_down(client, settings, requester):
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SyncFailed):
        sync_registry(trigger=SyncRun.Trigger.COMMAND)
    client.force_login(requester)
    response = client.get("/")
    assert response.status_code == 200
    assert "MLflow is not answering" in response.content.decode()


def test_it_reports_the_worker_heartbeat_and_a_stale_one_does_not_fail_it(staff_client, settings, registry):
    settings.HEALTHZ_CACHE_SECONDS = 0
    assert staff_client.get("/healthz").json()["worker"] == "never seen"
    WorkerHeartbeat.objects.create(marker="beat", worker="w1", seen_at=timezone.now())
    assert staff_client.get("/healthz").json()["worker"] == "ok"
    stale = timezone.now() - timezone.timedelta(seconds=3 * settings.HEARTBEAT_INTERVAL_SECONDS + 5)
    WorkerHeartbeat.objects.filter(marker="beat").update(seen_at=stale)
    response = staff_client.get("/healthz")
    assert response.json()["worker"].startswith("stale: last heartbeat")
    assert response.status_code == 200  # reported, not judged: see the README's Health section
