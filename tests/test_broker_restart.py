"""A broker restart with an approval in flight, on a RabbitMQ node and a Redis server of the
tests' own (the machine's shared ones are never restarted).

RabbitMQ keeps what it was given: the apply queue is durable and the task persistent, so a
message published before the restart is delivered after it. A Redis without persistence comes
back empty: the sweeper publishes the approved request again. Either way the worker reconnects
by itself, and the version is written to MLflow once.

The embedded SQLite broker is a file, with no server to restart: it is left out here.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from bench.common import wait_until
from promotions import services
from promotions.models import PromotionRequest
from tests.apply_helpers import approved_request, registry_with_production
from tests.brokers import RabbitNode, RedisServer, rabbitmq_missing, redis_missing
from tests.conftest import broker_unreachable
from tests.test_apply_worker import TRANSITION, applied_count, wait_for_status

pytestmark = [pytest.mark.worker, pytest.mark.once]  # brokers of their own, started here

Status = PromotionRequest.Status


@pytest.fixture(scope="module", params=["rabbitmq", "redis"])
def broker(request, tmp_path_factory):
    """One private broker per kind for the whole module: a RabbitMQ node takes about 6 s to boot."""
    if request.param == "rabbitmq":
        if rabbitmq_missing():
            pytest.skip("rabbitmq-server is not installed")
        server = RabbitNode(tmp_path_factory.mktemp("rabbitmq"))
    else:
        if redis_missing():
            pytest.skip("redis-server is not installed")
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def on_broker(broker):
    """The test's own publishing (approvals, the sweeper) goes to the private broker."""
    with broker_unreachable(broker.url):  # the same switch as for a closed port, to one that answers
        yield broker


def start_worker(worker_factory, broker, **env):
    worker = worker_factory(CELERY_BROKER_URL=broker.url, **env)
    wait_until(lambda: " ready." in worker.log(), timeout=60, message=f"the worker\n{worker.log()[-3000:]}")
    return worker


@contextmanager
def paused(worker):
    """The worker is alive and connected but takes nothing: as one busy with other work."""
    os.killpg(worker.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(worker.process.pid, signal.SIGCONT)


def later():
    """A time at which an approved request whose task nobody took counts as stuck."""
    return timezone.now() + timedelta(seconds=settings.PROMOTION_STUCK_AFTER_SECONDS + 1)


def test_a_task_published_before_the_broker_restarts_is_applied_once_by_the_same_worker(
    on_broker, mlflow_proxy, registry, model_name, requester, reviewer, reviewer2, worker_factory
):
    broker = on_broker
    client = registry.client()
    registry_with_production(client, model_name)
    worker = start_worker(worker_factory, broker)

    with paused(worker):
        broker.wait_until_no_consumer_waits()
        request = approved_request(model_name, requester, [reviewer, reviewer2])
        request.refresh_from_db()
        assert request.enqueued_at is not None  # committed and published
        wait_until(lambda: broker.messages("apply") == 1, timeout=10, message="the task in the broker")

        broker.restart()

        if broker.keeps_messages:
            assert broker.messages("apply") == 1
        else:
            assert broker.messages("apply") == 0
    if broker.keeps_messages:
        assert services.requests_sweep() == []  # nothing stuck: the broker still has it
    else:
        # Gone with the restart: once the task counts as stuck, the sweeper publishes it again.
        assert services.requests_sweep(now=later()) == [request.pk]

    wait_for_status(request, Status.APPLIED, worker=worker, timeout=60)
    assert client.get_model_version(model_name, "2").current_stage == "Production"
    assert client.get_model_version(model_name, "1").current_stage == "Archived"
    assert applied_count(request) == 1
    assert mlflow_proxy.writes(TRANSITION) == 1
    assert worker.process.poll() is None  # the same worker, reconnected by itself
    assert services.requests_sweep(now=later()) == []


def test_a_broker_restart_during_an_apply_leaves_one_write_and_a_worker_that_keeps_consuming(
    on_broker, mlflow_proxy, registry, model_name, requester, reviewer, reviewer2, worker_factory, caplog
):
    broker = on_broker
    client = registry.client()
    next_model = f"{model_name}_next"
    registry_with_production(client, model_name)
    registry_with_production(client, next_model)
    # The held MLflow call outlasts the restart (about 7 s on RabbitMQ, more on a busy machine)
    # without timing out: MLflow's client reads its timeout from the environment we pass on.
    worker = start_worker(worker_factory, broker, MLFLOW_HTTP_REQUEST_TIMEOUT="90")
    mlflow_proxy.hold_paths = (TRANSITION,)

    request = approved_request(model_name, requester, [reviewer, reviewer2])
    assert mlflow_proxy.held.wait(60), worker.log()[-3000:]
    broker.restart()  # the apply's message is unacknowledged, its MLflow write in flight
    mlflow_proxy.hold_paths = ()
    mlflow_proxy.release.set()

    wait_for_status(request, Status.APPLIED, worker=worker, timeout=60)
    caplog.clear()
    following = approved_request(next_model, requester, [reviewer, reviewer2])
    # The first publish after the restart meets the connection the restart closed: it is made
    # again at once, not left to a sweeper.
    assert "Could not publish" not in caplog.text
    wait_for_status(following, Status.APPLIED, worker=worker, timeout=60)

    assert applied_count(request) == 1
    assert applied_count(following) == 1
    assert mlflow_proxy.writes(TRANSITION) == 2  # one per request: a redelivery wrote nothing
    assert client.get_model_version(model_name, "2").current_stage == "Production"
    assert client.get_model_version(next_model, "2").current_stage == "Production"
    assert worker.process.poll() is None
    assert services.requests_sweep(now=later()) == []
