"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, made fit for a worker.

kombu's own transport keeps every consumed message (as invisible) forever, never redelivers a
message whose worker died before acknowledging it, and polls once a second inside a two-second
wait, so a worker told to stop (SIGTERM, Ctrl-C) went on waiting for up to three seconds before
it even looked. This one, registered for `sqla+` URLs by config/celery.py:

* deletes a message when it is acknowledged (or rejected without requeue);
* hands a message out again when it has been out for `visibility_timeout` seconds without an
  acknowledgement (the worker holding it died), as Redis and SQS do;
* puts a message requeued by its worker back where it was, instead of a copy at the end;
* polls every `polling_interval` seconds (0.2) and returns to the worker's loop at least every
  half second, so a stop is noticed at once;
* with `queue_order_strategy` "priority", takes from the queues in the order they are consumed
  (the apply queue first), as Redis' transport does.

Its tables are `broker_queue` and `broker_message`: a file written by kombu's transport holds
consumed rows that must not come back.
"""

from __future__ import annotations

import datetime
import json
from queue import Empty

from kombu.transport import sqlalchemy as kombu_sqla
from kombu.transport.sqlalchemy.models import Message as MessageBase
from kombu.utils import cached_property
from kombu.utils.encoding import bytes_to_str
from kombu.utils.scheduling import FairCycle
from sqlalchemy import Index, and_, or_, text

MESSAGE_ID = "broker_message_id"  # in a delivered message's properties: its row
# The longest the worker's loop waits inside one drain before it looks for a stop again.
LONGEST_WAIT_SECONDS = 0.5
DEFAULT_VISIBILITY_TIMEOUT = 3600
# Options of this transport, not of SQLAlchemy's create_engine (which refuses unknown ones).
OWN_OPTIONS = ("visibility_timeout", "polling_interval", "queue_order_strategy")


class InOrder(FairCycle):
    """Each get starts from the first queue consumed: a worker empties the apply queue before it
    takes a notification (queue_order_strategy "priority", as Redis' transport names it)."""

    def get(self, callback, **kwargs):
        self.pos = 0
        return super().get(callback, **kwargs)


class Channel(kombu_sqla.Channel):
    def _configure_entity_tablenames(self, opts):
        self.queue_tablename = opts.get("queue_tablename", "broker_queue")
        self.message_tablename = opts.get("message_tablename", "broker_message")
        self.visibility_timeout = float(opts.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT))
        self.queue_order = opts.get("queue_order_strategy", "round_robin")
        self.queue_cls and self.message_cls  # noqa: B018 — declares the tables before the engine

    @cached_property
    def message_cls(self):
        # kombu's index name is fixed: a file that also holds kombu's own tables already has it.
        table_args = (
            Index(f"ix_{self.message_tablename}_timestamp_id", "timestamp", "id"),
            {"sqlite_autoincrement": True, "mysql_engine": "InnoDB"},
        )
        return self._declarative_cls(
            "Message", MessageBase, {"__tablename__": self.message_tablename, "__table_args__": table_args}
        )

    def _reset_cycle(self):
        cycle = InOrder if self.queue_order == "priority" else FairCycle
        self._cycle = cycle(self._get_and_deliver, self._active_queues, Empty)

    def _engine_from_config(self):
        conninfo = self.connection.client
        saved = conninfo.transport_options
        conninfo.transport_options = {k: v for k, v in saved.items() if k not in OWN_OPTIONS}
        try:
            return super()._engine_from_config()
        finally:
            conninfo.transport_options = saved

    def _put(self, queue, payload, **kwargs):
        payload.get("properties", {}).pop(MESSAGE_ID, None)
        super()._put(queue, payload, **kwargs)

    def _get(self, queue):
        obj = self._get_or_create(queue)
        message_cls = self.message_cls
        # The transport's own timestamps are naive local time (its column's onupdate).
        overdue = datetime.datetime.now() - datetime.timedelta(seconds=self.visibility_timeout)
        if self.session.bind.name == "sqlite":
            self.session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            row = (
                self.session.query(message_cls)
                .with_for_update()
                .filter(message_cls.queue_id == obj.id)
                .filter(
                    or_(
                        message_cls.visible != False,  # noqa: E712 — SQL, not Python
                        and_(message_cls.visible == False, message_cls.sent_at < overdue),  # noqa: E712
                    )
                )
                .order_by(message_cls.id)  # first in, first out; a requeued message keeps its turn
                .limit(1)
                .first()
            )
            if row is None:
                raise Empty()
            row.visible = False
            row.sent_at = datetime.datetime.now()  # when it went out: redelivered after the timeout
            payload = json.loads(bytes_to_str(row.payload))
            payload.setdefault("properties", {})[MESSAGE_ID] = row.id
            return payload
        finally:
            self.session.commit()

    def _row_of(self, delivery_tag):
        message = self.qos._delivered.get(delivery_tag)
        return None if message is None else message.properties.get(MESSAGE_ID)

    def _own_session(self):
        # Acknowledgements come from the pool's threads (the thread pool acks from the task's
        # thread), and the channel's session belongs to the thread that consumes: one of its own.
        _, Session = self._open()
        return Session()

    def _forget(self, row_id) -> None:
        if row_id is None:
            return
        with self._own_session() as session:
            session.query(self.message_cls).filter(self.message_cls.id == row_id).delete(
                synchronize_session=False
            )
            session.commit()

    def basic_ack(self, delivery_tag, multiple=False):
        row_id = self._row_of(delivery_tag)
        super().basic_ack(delivery_tag, multiple)
        self._forget(row_id)

    def basic_reject(self, delivery_tag, requeue=False):
        row_id = self._row_of(delivery_tag)
        super().basic_reject(delivery_tag, requeue=requeue)
        if not requeue:
            self._forget(row_id)

    def _restore(self, message):
        row_id = message.properties.get(MESSAGE_ID)
        if row_id is None:
            return super()._restore(message)
        # Back where it was, in its turn: the same row, visible again.
        with self._own_session() as session:
            session.query(self.message_cls).filter(self.message_cls.id == row_id).update(
                {"visible": True}, synchronize_session=False
            )
            session.commit()
        return None


class Transport(kombu_sqla.Transport):
    Channel = Channel
    polling_interval = 0.2

    def drain_events(self, connection, timeout=None):
        if timeout is not None:
            timeout = min(timeout, LONGEST_WAIT_SECONDS)
        return super().drain_events(connection, timeout=timeout)
