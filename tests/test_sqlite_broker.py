"""The embedded SQLite broker (config/broker.py): consumed messages go, unacknowledged ones
come back after the visibility timeout, a requeued one keeps its turn."""

import sqlite3
import subprocess
import sys
import time

import pytest
from kombu import Connection, Exchange, Queue

import config.celery  # noqa: F401 — registers the transport for sqla+ URLs
from config.broker import Transport

pytestmark = pytest.mark.once  # its own SQLite broker files

QUEUE = Queue("broker-test", Exchange("broker-test"), "broker-test")


@pytest.fixture
def url(tmp_path):
    return f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"


def rows(url):
    with sqlite3.connect(url.removeprefix("sqla+sqlite:///")) as db:
        return db.execute("SELECT visible FROM broker_message ORDER BY id").fetchall()


def publish(url, *bodies):
    with Connection(url) as connection:
        producer = connection.Producer()
        for body in bodies:
            producer.publish(body, exchange=QUEUE.exchange, routing_key=QUEUE.routing_key, declare=[QUEUE])


def test_sqla_urls_use_the_product_s_transport(url):
    with Connection(url) as connection:
        assert isinstance(connection.transport, Transport)


def test_an_acknowledged_message_is_deleted(url):
    publish(url, {"n": 1}, {"n": 2})
    with Connection(url) as connection:
        message = connection.SimpleQueue(QUEUE).get(timeout=2)
        assert message.payload == {"n": 1}
        message.ack()
    assert rows(url) == [(1,)]


def test_a_rejected_message_is_deleted_and_a_requeued_one_keeps_its_turn(url):
    publish(url, {"n": 1}, {"n": 2})
    with Connection(url) as connection:
        queue = connection.SimpleQueue(QUEUE)
        first = queue.get(timeout=2)
        first.requeue()
        again = queue.get(timeout=2)
        assert again.payload == {"n": 1}
        again.reject()
        assert queue.get(timeout=2).payload == {"n": 2}  # left unacknowledged: back at closing
    assert rows(url) == [(1,)]


CONSUMER_THAT_DIES = """
import os, sys
import config.celery
from kombu import Connection, Exchange, Queue
queue = Queue("broker-test", Exchange("broker-test"), "broker-test")
with Connection(sys.argv[1]) as connection:
    message = connection.SimpleQueue(queue).get(timeout=5)
    print(message.payload["n"], flush=True)
    os._exit(9)  # killed before it acknowledged
"""


def test_a_message_whose_consumer_died_is_delivered_again_after_the_visibility_timeout(url):
    publish(url, {"n": 7})
    died = subprocess.run(
        [sys.executable, "-c", CONSUMER_THAT_DIES, url], capture_output=True, text=True, timeout=60
    )
    assert died.returncode == 9 and died.stdout.strip() == "7", died.stderr
    assert rows(url) == [(0,)]  # out, unacknowledged
    with Connection(url, transport_options={"visibility_timeout": 60}) as connection:
        with pytest.raises(connection.SimpleQueue(QUEUE).Empty):
            connection.SimpleQueue(QUEUE).get(timeout=0.5)  # not yet: within its timeout
    time.sleep(1.1)
    with Connection(url, transport_options={"visibility_timeout": 1}) as connection:
        message = connection.SimpleQueue(QUEUE).get(timeout=2)
        assert message.payload == {"n": 7}
        message.ack()
    assert rows(url) == []


def test_a_worker_s_wait_returns_often_enough_to_notice_a_stop(url):
    # The worker's loop asks for two seconds; a stop is only read between waits.
    publish(url)
    with Connection(url) as connection:
        connection.SimpleQueue(QUEUE)  # declares and consumes nothing
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=2.0)
        assert time.monotonic() - started < 1.5


# --- queues: applies never wait behind notifications ------------------------------------------


def test_the_product_routes_applies_notifications_and_the_rest_to_queues_of_their_own():
    from config.celery import app

    def queue_of(task: str) -> str:
        return app.amqp.router.route({}, task)["queue"].name

    assert {queue_of(t) for t in ("promotions.apply_promotion", "promotions.compute_manifest")} == {"apply"}
    assert {queue_of(t) for t in ("promotions.send_email", "promotions.deliver_webhook")} == {"notify"}
    assert {queue_of(t) for t in ("registry_sync.sync_delta", "promotions.sweep_requests")} == {"sync"}
    # A worker started without -Q consumes all three, the apply queue first.
    assert [q.name for q in app.amqp.queues.consume_from.values()] == ["apply", "sync", "notify"]


def queues():
    return [
        Queue(name, Exchange(name, type="direct"), routing_key=name) for name in ("apply", "sync", "notify")
    ]


def test_a_worker_takes_the_apply_queue_first_whatever_waits_in_the_others(url):
    apply_queue, sync_queue, notify_queue = queues()

    def put(queue, body):
        with Connection(url) as connection:
            connection.Producer().publish(
                body, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue]
            )

    for n in range(5):
        put(sync_queue, {"sync": n})
        put(notify_queue, {"notify": n})
    taken = []
    with Connection(url, transport_options={"queue_order_strategy": "priority"}) as connection:
        consumer = connection.Consumer(queues(), accept=["json"])
        consumer.register_callback(lambda body, message: (taken.append(body), message.ack()))
        with consumer:
            connection.drain_events(timeout=2)  # nothing to apply: the next queue in order
            put(apply_queue, {"apply": 1})
            connection.drain_events(timeout=2)
    # Round robin would have gone on to the notification queue; the apply came first.
    assert taken == [{"sync": 0}, {"apply": 1}]
