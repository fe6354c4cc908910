"""kombu's Redis transport, made to survive a broker that goes away while a task is running.

On a lost connection Celery 5.7 first collects the connection (which detaches the transport
from it) and then closes it; closing a channel that still holds an unacknowledged message (any
apply in flight: tasks acknowledge late) tries to put the message back through a new client,
whose address it reads from the detached, empty connection. The AttributeError that follows is
no connection error, so the worker treated it as unrecoverable and exited instead of
reconnecting (tests/test_broker_restart.py). Here it is the connection error it is: the
message stays in Redis' unacknowledged set, to come back after the visibility timeout, and the
worker reconnects.

Registered for `redis://` and `rediss://` URLs by config/celery.py.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict:
        if self.connection.client is None:
            raise RedisConnectionError("the connection to Redis was closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
