"""MLflow's own webhooks, end to end: registered by our command in the real MLflow server,
delivered by it to the live test server, refreshing the one model they name; the older
`sha256=` signature; what is refused; and how a storm of events collapses into few refreshes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command

from bench.common import ROOT, wait_until
from registry_sync import refresh
from registry_sync.management.commands.register_mlflow_webhook import EVENTS, webhook_name
from registry_sync.models import ModelVersion, PendingRefresh, RegisteredModel, SyncRun, WebhookDelivery
from registry_sync.services import sync_registry
from registry_sync.tasks import refresh_model_task
from registry_sync.webhooks import sign, sign_legacy
from tests.conftest import subprocess_env
from tests.registry_helpers import make_version

SECRET = "whsec-e2e"
URL = "/hooks/mlflow/"


@pytest.fixture
def secret(settings):
    settings.MLFLOW_WEBHOOK_SECRET = SECRET


@pytest.fixture
def mlflow_webhooks(registry):
    """The session's MLflow server is shared: delete every webhook a test registered."""
    client = registry.client()
    before = {hook.webhook_id for hook in client.list_webhooks()}
    yield client
    for hook in client.list_webhooks():
        if hook.webhook_id not in before:
            client.delete_webhook(hook.webhook_id)


def ours(client, site_url):
    return [hook for hook in client.list_webhooks() if hook.name == webhook_name(site_url)]


def event_names(hook):
    return sorted(f"{event.entity.value}.{event.action.value}" for event in hook.events)


def body(name, *, entity="model_version_alias", action="created", at=None, **data):
    at = at or datetime.now(UTC)
    return json.dumps(
        {"entity": entity, "action": action, "timestamp": at.isoformat(), "data": {"name": name, **data}}
    ).encode()


def deliver(client, content: bytes, *, secret=SECRET, delivery_id=None):
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(int(time.time()))
    return client.post(
        URL,
        content,
        content_type="application/json",
        HTTP_X_MLFLOW_DELIVERY_ID=delivery_id,
        HTTP_X_MLFLOW_TIMESTAMP=timestamp,
        HTTP_X_MLFLOW_SIGNATURE=sign(secret, delivery_id, timestamp, content),
    )


def deliver_legacy(client, content: bytes, *, secret=SECRET, signature=None, **headers):
    return client.post(
        URL,
        content,
        content_type="application/json",
        HTTP_X_MLFLOW_SIGNATURE=signature or sign_legacy(secret, content),
        **headers,
    )


def nothing_written():
    return not WebhookDelivery.objects.exists() and not PendingRefresh.objects.exists()


# --- registering the webhook in MLflow --------------------------------------------------------


def test_registering_twice_keeps_one_webhook_updated_in_place(mlflow_webhooks, settings, secret):
    settings.SITE_URL = "http://127.0.0.1:8999"
    call_command("register_mlflow_webhook")
    [first] = ours(mlflow_webhooks, settings.SITE_URL)
    assert first.url == "http://127.0.0.1:8999/hooks/mlflow/"
    assert event_names(first) == sorted(EVENTS)

    # Someone narrows and disables it in MLflow, and a second one of the same name appears.
    mlflow_webhooks.update_webhook(first.webhook_id, events=["model_version.created"], status="DISABLED")
    mlflow_webhooks.create_webhook(
        webhook_name(settings.SITE_URL), "http://127.0.0.1:8999/elsewhere/", ["model_version.created"]
    )
    call_command("register_mlflow_webhook")
    call_command("register_mlflow_webhook")

    [again] = ours(mlflow_webhooks, settings.SITE_URL)
    assert again.webhook_id == first.webhook_id
    assert again.url == first.url
    assert event_names(again) == sorted(EVENTS)
    assert again.status.is_active()


def test_registering_refuses_without_a_secret_with_exit_code_1(mlflow_webhooks, settings):
    result = subprocess.run(
        [sys.executable, "manage.py", "register_mlflow_webhook"],
        cwd=ROOT,
        env=subprocess_env(MLFLOW_WEBHOOK_SECRET="", SITE_URL="http://127.0.0.1:8999"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "MLFLOW_WEBHOOK_SECRET is not set" in result.stderr
    assert ours(mlflow_webhooks, "http://127.0.0.1:8999") == []


def test_registering_refuses_without_a_site_url(mlflow_webhooks, settings, secret, monkeypatch):
    before = len(mlflow_webhooks.list_webhooks())
    settings.SITE_URL = ""
    with pytest.raises(CommandError, match="SITE_URL is not set") as refused:
        call_command("register_mlflow_webhook")
    assert refused.value.returncode == 1
    # The built-in default is no address MLflow could reach us at.
    monkeypatch.delenv("SITE_URL", raising=False)
    settings.SITE_URL = "http://127.0.0.1:8000"
    with pytest.raises(CommandError, match="SITE_URL is not set"):
        call_command("register_mlflow_webhook")
    assert len(mlflow_webhooks.list_webhooks()) == before


# --- MLflow delivering to the live server ------------------------------------------------------


def test_an_alias_set_in_mlflow_reaches_the_mirror_through_mlflows_webhook(
    live_server, registry, mlflow_webhooks, celery_worker, model_name, settings
):
    client = registry.client()
    make_version(client, model_name)
    v2 = make_version(client, model_name)
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    settings.SITE_URL = live_server.url
    # Registered with one secret, then rotated: the second run updates the webhook in place.
    settings.MLFLOW_WEBHOOK_SECRET = "an-older-secret"
    call_command("register_mlflow_webhook")
    settings.MLFLOW_WEBHOOK_SECRET = SECRET
    call_command("register_mlflow_webhook")
    assert len(ours(mlflow_webhooks, live_server.url)) == 1
    time.sleep(1.5)  # the test server caches the webhooks of an event for 1 s

    client.set_registered_model_alias(model_name, "champion", str(v2))

    # The model's row and its versions' rows are written in two transactions of the refresh.
    wait_until(
        lambda: (
            RegisteredModel.objects.get(name=model_name).aliases == {"champion": v2}
            and ModelVersion.objects.get(model__name=model_name, version=v2).aliases == ["champion"]
        ),
        timeout=60,
        message=f"the alias to reach the mirror\n{celery_worker.log()[-3000:]}",
    )
    delivery = WebhookDelivery.objects.get(model_name=model_name)
    assert delivery.event == "model_version_alias.created"
    # The run's counts are saved when the refresh ends, a moment after its last page is written.
    run = wait_until(
        lambda: SyncRun.objects.filter(
            trigger=SyncRun.Trigger.WEBHOOK, scope=model_name, finished_at__isnull=False
        ).first(),
        timeout=30,
        message="the refresh to finish",
    )
    assert (run.models_seen, run.versions_seen, run.error) == (1, 2, "")

    client.delete_registered_model_alias(model_name, "champion")
    wait_until(
        lambda: (
            RegisteredModel.objects.get(name=model_name).aliases == {}
            and ModelVersion.objects.get(model__name=model_name, version=v2).aliases == []
        ),
        timeout=60,
        message=f"the alias deletion to reach the mirror\n{celery_worker.log()[-3000:]}",
    )


# --- the older signature, and what is refused -------------------------------------------------


@pytest.mark.django_db
def test_the_older_sha256_signature_is_accepted(client, secret):
    response = deliver_legacy(client, body("sales_forecast"))
    assert response.status_code == 202
    delivery = WebhookDelivery.objects.get()
    assert delivery.delivery_id.startswith("sha256:")
    assert PendingRefresh.objects.get().model_name == "sales_forecast"


@pytest.mark.django_db
def test_the_older_bare_payload_with_a_timestamp_header_is_accepted(client, secret):
    content = json.dumps({"name": "sales_forecast", "version": "3", "key": "k", "value": "v"}).encode()
    response = deliver_legacy(client, content, HTTP_X_MLFLOW_TIMESTAMP=str(int(time.time())))
    assert response.status_code == 202
    assert response.json()["model"] == "sales_forecast"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: ({"signature": "sha256=" + "0" * 64}, body("m")), "bad signature"),
        (lambda: ({"secret": "another-secret"}, body("m")), "bad signature"),
        (lambda: ({}, body("m", at=datetime.now(UTC) - timedelta(seconds=301))), "stale"),
        (lambda: ({}, json.dumps({"data": {"name": "m"}}).encode()), "needs a timestamp"),
        (
            lambda: (
                {"HTTP_X_MLFLOW_TIMESTAMP": str(int(time.time()) - 301)},
                json.dumps({"data": {"name": "m"}}).encode(),
            ),
            "stale",
        ),
    ],
)
def test_the_older_form_refuses_bad_signatures_and_stale_or_timeless_bodies(client, secret, make, reason):
    kwargs, content = make()
    response = deliver_legacy(client, content, **kwargs)
    assert response.status_code == 401
    assert reason in response.json()["message"]
    assert nothing_written()


@pytest.mark.django_db
def test_an_older_form_delivery_replayed_is_refused_even_with_another_delivery_id(client, secret):
    content = body("m")
    assert deliver_legacy(client, content, HTTP_X_MLFLOW_DELIVERY_ID="a").status_code == 202
    response = deliver_legacy(client, content, HTTP_X_MLFLOW_DELIVERY_ID="b")
    assert response.status_code == 401
    assert "replayed" in response.json()["message"]
    assert WebhookDelivery.objects.count() == 1


@pytest.mark.django_db
def test_an_unsigned_delivery_is_refused(client, secret):
    response = client.post(
        URL,
        body("m"),
        content_type="application/json",
        HTTP_X_MLFLOW_DELIVERY_ID=str(uuid.uuid4()),
        HTTP_X_MLFLOW_TIMESTAMP=str(int(time.time())),
    )
    assert response.status_code == 401
    assert nothing_written()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "content",
    [
        json.dumps({"entity": "model_version", "data": {"name": "x" * 257}}).encode(),
        json.dumps({"entity": "model_version", "data": {"name": "  "}}).encode(),
        json.dumps({"entity": "model_version", "data": ["name"]}).encode(),
        json.dumps({"entity": "model_version", "data": "name"}).encode(),
    ],
)
def test_a_body_naming_no_usable_model_gets_400_and_writes_nothing(client, secret, content):
    response = deliver(client, content)
    assert response.status_code == 400
    assert nothing_written()


def test_an_event_for_a_model_mlflow_does_not_have_refreshes_and_finds_nothing(
    client, registry, transactional_db, secret, model_name
):
    assert deliver(client, body(model_name, entity="model_version", action="created")).status_code == 202
    run_id = refresh_model_task(model_name)  # what the worker runs, here in the test process
    run = SyncRun.objects.get(pk=run_id)
    assert (run.scope, run.models_seen, run.versions_seen, run.error) == (model_name, 0, 0, "")
    assert not RegisteredModel.objects.filter(name=model_name).exists()
    assert not PendingRefresh.objects.exists()


# --- a storm of events for one model -----------------------------------------------------------


def webhook_runs(model_name):
    return SyncRun.objects.filter(trigger=SyncRun.Trigger.WEBHOOK, scope=model_name)


def test_a_storm_while_a_refresh_is_queued_enqueues_nothing_more(
    client, registry, worker_factory, secret, model_name
):
    version = make_version(registry.client(), model_name)
    for number in range(1000):
        response = deliver(client, body(model_name, alias=f"a{number}", version=str(version)))
        assert response.status_code == 202
    assert WebhookDelivery.objects.filter(model_name=model_name).count() == 1000
    assert PendingRefresh.objects.get(model_name=model_name).state == PendingRefresh.State.QUEUED

    worker = worker_factory()  # only now: every event above found the first refresh queued
    wait_until(
        lambda: (
            ModelVersion.objects.filter(model__name=model_name, version=version).exists()
            and not PendingRefresh.objects.exists()
        ),
        timeout=60,
        message=f"the refresh\n{worker.log()[-3000:]}",
    )
    time.sleep(3)  # room for any second refresh to show up
    assert webhook_runs(model_name).count() == 1


def test_a_storm_while_a_refresh_runs_queues_exactly_one_more(
    client, mlflow_proxy, worker_factory, registry, secret, model_name
):
    make_version(registry.client(), model_name)
    mlflow_proxy.hold_paths = ("registered-models/search",)
    worker = worker_factory()  # talks to MLflow through the proxy
    assert deliver(client, body(model_name)).status_code == 202
    assert mlflow_proxy.held.wait(60), worker.log()[-3000:]
    assert PendingRefresh.objects.get(model_name=model_name).state == PendingRefresh.State.RUNNING

    for _ in range(500):
        assert deliver(client, body(model_name)).status_code == 202
    row = PendingRefresh.objects.get(model_name=model_name)
    assert (row.state, row.again) == (PendingRefresh.State.RUNNING, True)

    mlflow_proxy.hold_paths = ()
    mlflow_proxy.release.set()
    wait_until(
        lambda: webhook_runs(model_name).count() == 2 and not PendingRefresh.objects.exists(),
        timeout=60,
        message=f"the refresh and its one follow-up\n{worker.log()[-3000:]}",
    )
    time.sleep(3)
    assert webhook_runs(model_name).count() == 2
    first, second = webhook_runs(model_name).order_by("started_at")
    assert second.started_at >= first.finished_at  # one after the other


def test_1000_events_in_10_seconds_cost_a_bounded_number_of_serial_refreshes(
    client, registry, celery_worker, secret, model_name
):
    make_version(registry.client(), model_name)
    started = time.monotonic()
    for number in range(1000):
        assert deliver(client, body(model_name)).status_code == 202
        # Spread over 10 s whatever this machine's speed.
        time.sleep(max(0.0, started + (number + 1) * 0.01 - time.monotonic()))
    storm_seconds = time.monotonic() - started
    wait_until(
        lambda: not PendingRefresh.objects.exists(),
        timeout=60,
        message=f"the refreshes to end\n{celery_worker.log()[-3000:]}",
    )
    runs = list(webhook_runs(model_name).order_by("started_at"))
    shortest = min(run.seconds for run in runs)
    assert 1 <= len(runs) <= 2 + storm_seconds / shortest
    for before, after in zip(runs, runs[1:], strict=False):
        assert after.started_at >= before.finished_at  # never two refreshes of one model at once


@pytest.mark.django_db
def test_a_refresh_left_behind_is_taken_over_by_the_next_event(
    client, secret, django_capture_on_commit_callbacks
):
    assert deliver(client, body("m")).status_code == 202
    assert refresh.claim("m")  # a worker took it, then died
    with django_capture_on_commit_callbacks() as enqueued:
        assert deliver(client, body("m")).status_code == 202
    assert enqueued == []  # still running, as far as anyone can tell
    PendingRefresh.objects.update(changed_at=datetime.now(UTC) - timedelta(seconds=121))

    with django_capture_on_commit_callbacks() as enqueued:
        assert deliver(client, body("m")).status_code == 202

    assert len(enqueued) == 1

    row = PendingRefresh.objects.get()
    assert (row.state, row.claim) == (PendingRefresh.State.QUEUED, "")


@pytest.mark.django_db
def test_only_the_first_event_for_a_model_enqueues_while_its_refresh_waits(
    client, secret, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as first:
        assert deliver(client, body("m")).status_code == 202
    with django_capture_on_commit_callbacks() as rest:
        for _ in range(999):
            assert deliver(client, body("m")).status_code == 202
    with django_capture_on_commit_callbacks() as another_model:
        assert deliver(client, body("n")).status_code == 202
    assert (len(first), len(rest), len(another_model)) == (1, 0, 1)
    assert WebhookDelivery.objects.count() == 1001
