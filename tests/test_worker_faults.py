"""Crashes and restarts of real worker processes in the middle of an apply (RELIABILITY.md 2, 8, 9).

Real MLflow behind the proxy (to hold or count its calls), real Celery workers on the configured
broker, real signals. Whatever the broker does with the unacknowledged message of a dead worker
(RabbitMQ redelivers it at once, Redis after its visibility timeout, the SQLite transport never),
the sweeper, run here as beat would run it, gets the request applied or failed.
"""

import os
import signal
import uuid

import pytest
from django.utils import timezone

from bench.common import wait_until
from promotions import services
from promotions.models import AuditEvent, PromotionRequest, WorkerHeartbeat
from promotions.tasks import record_heartbeat
from tests.apply_helpers import approved_request, registry_with_production
from tests.conftest import WORKER_ENV

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

Status = PromotionRequest.Status
SEARCH = "/model-versions/search"  # the apply's read of the model's versions (a Production target)
TRANSITION = "/model-versions/transition-stage"
MAX_ATTEMPTS = int(WORKER_ENV["PROMOTION_MAX_ATTEMPTS"])


def events(request, action):
    return AuditEvent.objects.filter(action=action, request_id=request.pk).count()


def status_of(request):
    request.refresh_from_db()
    return request.status


def sweep_until(request, *statuses, worker, timeout=60):
    """Run the sweeper, as beat does, until the request reaches one of statuses. It republishes
    the request only once the crashed attempt's lease has expired."""

    def reached():
        if status_of(request) in statuses:
            return True
        services.requests_sweep()
        return False

    wait_until(
        reached,
        timeout=timeout,
        interval=0.5,
        message=f"{statuses} (is {request.status})\n{worker.log()[-3000:]}",
    )


def queue_drained(worker):
    """A task published now is run only after every message already queued was taken."""
    marker = uuid.uuid4().hex
    record_heartbeat.delay(marker)
    wait_until(
        lambda: WorkerHeartbeat.objects.filter(marker=marker).exists(),
        timeout=60,
        message=f"the worker to reach {marker}\n{worker.log()[-3000:]}",
    )


def test_a_worker_killed_before_the_mlflow_write_writes_once_after_restart(
    mlflow_proxy, model_name, requester, reviewer, reviewer2, worker_factory, registry
):
    client = registry.client()
    registry_with_production(client, model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])  # queued, no worker yet
    mlflow_proxy.hold_paths, mlflow_proxy.drop_held = (SEARCH,), True
    first = worker_factory()

    assert mlflow_proxy.held.wait(60), first.log()[-3000:]
    assert (status_of(request), request.attempts) == (Status.APPLYING, 1)  # claimed, reading MLflow
    first.kill()  # kill -9 inside the read: no write was sent
    mlflow_proxy.hold_paths = ()
    mlflow_proxy.release.set()
    assert mlflow_proxy.writes(TRANSITION) == 0
    assert client.get_model_version(model_name, "2").current_stage == "Staging"

    second = worker_factory()
    sweep_until(request, Status.APPLIED, Status.FAILED, worker=second)

    assert request.status == Status.APPLIED, request.last_error
    assert request.attempts == 2
    assert mlflow_proxy.writes(TRANSITION) == 1
    assert events(request, "promotion.applied") == 1
    event = AuditEvent.objects.get(action="promotion.applied", request_id=request.pk)
    assert (event.details["already_in_place"], event.details["written"]) == (False, ["stage"])
    assert event.details["previous_holders"] == [1]
    assert client.get_model_version(model_name, "2").current_stage == "Production"
    assert client.get_model_version(model_name, "1").current_stage == "Archived"


def test_sigterm_during_the_mlflow_write_lets_the_apply_finish(
    mlflow_proxy, model_name, requester, reviewer, reviewer2, worker_factory, registry
):
    client = registry.client()
    registry_with_production(client, model_name)
    mlflow_proxy.hold_paths = (TRANSITION,)
    worker = worker_factory()
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    assert mlflow_proxy.held.wait(60), worker.log()[-3000:]
    status_of(request)
    lease_at_sigterm = request.lease_expires_at

    os.killpg(worker.process.pid, signal.SIGTERM)  # what a rolling restart sends
    wait_until(lambda: "Warm shutdown" in worker.log(), message=f"a warm shutdown\n{worker.log()[-3000:]}")
    # The worker waits for its task, and the task keeps renewing its lease: past the lease the
    # attempt held when the signal came, the sweeper still leaves it alone.
    wait_until(lambda: timezone.now() > lease_at_sigterm, timeout=30, message="the first lease's end")
    assert status_of(request) == Status.APPLYING
    assert request.lease_expires_at > timezone.now()
    assert services.requests_sweep() == []
    assert worker.process.poll() is None  # still waiting for the task

    mlflow_proxy.hold_paths = ()
    mlflow_proxy.release.set()
    assert worker.process.wait(timeout=60) == 0, worker.log()[-3000:]

    assert status_of(request) == Status.APPLIED, request.last_error
    assert request.attempts == 1  # finished by the worker that was told to stop
    assert mlflow_proxy.writes(TRANSITION) == 1
    assert events(request, "promotion.applied") == 1
    assert client.get_model_version(model_name, "2").current_stage == "Production"
    assert services.requests_sweep() == []


def test_sigterm_on_an_apply_outlasting_the_grace_hands_it_on_and_the_worker_exits(
    mlflow_proxy, model_name, requester, reviewer, reviewer2, worker_factory, registry
):
    client = registry.client()
    registry_with_production(client, model_name)
    mlflow_proxy.hold_paths = (TRANSITION,)
    worker = worker_factory(PROMOTION_SHUTDOWN_GRACE_SECONDS="2")
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    assert mlflow_proxy.held.wait(60), worker.log()[-3000:]

    os.killpg(worker.process.pid, signal.SIGTERM)
    # Without the bound the worker would wait for the held call (two minutes, then the write).
    worker.process.wait(timeout=30)
    assert "leaving them to the next worker" in worker.log(), worker.log()[-3000:]

    # The call the stopped worker had sent never reaches MLflow; the next worker applies it once.
    mlflow_proxy.drop_held = True
    mlflow_proxy.hold_paths = ()
    mlflow_proxy.release.set()
    second = worker_factory()
    sweep_until(request, Status.APPLIED, Status.FAILED, worker=second)
    assert request.status == Status.APPLIED, request.last_error
    assert mlflow_proxy.writes(TRANSITION) == 1
    assert events(request, "promotion.applied") == 1
    assert client.get_model_version(model_name, "2").current_stage == "Production"


def test_a_request_that_crashes_its_worker_every_time_fails_at_the_attempt_bound(
    mlflow_proxy, model_name, requester, reviewer, reviewer2, worker_factory, registry, client
):
    registry_with_production(registry.client(), model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])  # queued, no worker yet

    def crashing_worker():
        return worker_factory(options=("--include", "tests.crashing_worker"), CRASH_APPLYING_MODEL=model_name)

    crashes = 0
    while True:
        worker = crashing_worker()
        wait_until(
            lambda w=worker: w.process.poll() is not None or status_of(request) == Status.FAILED,
            timeout=90,
            message=f"a crash or the request failed (is {request.status})\n{worker.log()[-3000:]}",
        )
        if status_of(request) == Status.FAILED:
            break
        assert worker.process.returncode == -signal.SIGKILL, worker.log()[-3000:]
        crashes += 1
        assert crashes <= MAX_ATTEMPTS, f"still {request.status} after {crashes} crashes"
        # The crashed attempt's lease runs out; the sweeper republishes it (once expired, not before).
        wait_until(
            lambda: services.requests_sweep() == [request.pk], timeout=30, message="the lease to expire"
        )

    # Each crash came from one claimed attempt; the claim after the bound refuses and fails it.
    assert crashes == MAX_ATTEMPTS
    assert request.attempts == MAX_ATTEMPTS + 1
    assert request.last_error == f"gave up after {MAX_ATTEMPTS} attempts"
    assert events(request, "promotion.failed") == 1
    assert events(request, "promotion.applied") == 0
    assert mlflow_proxy.writes(TRANSITION) == 0

    # It stops: whatever copies of the task were still queued are taken and change nothing; the
    # sweeper has nothing to republish; the worker that refused it is alive.
    queue_drained(worker)
    assert services.requests_sweep() == []
    assert worker.process.poll() is None
    assert (status_of(request), request.attempts) == (Status.FAILED, MAX_ATTEMPTS + 1)
    assert events(request, "promotion.failed") == 1

    # Visible: the request's page says why, to a reviewer.
    client.force_login(reviewer)
    page = client.get(f"/requests/{request.pk}/")
    assert page.status_code == 200
    assert f"Failed: gave up after {MAX_ATTEMPTS} attempts" in page.content.decode()
