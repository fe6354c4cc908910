import logging
import os
import signal
import threading
import time

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_shutting_down
from kombu.transport import TRANSPORT_ALIASES

from common.redact import RedactingFilter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# `sqla+sqlite:///…` (the embedded default) means our SQLite broker, which redelivers, deletes
# what was consumed and lets a worker stop at once (config/broker.py); every process that
# publishes or consumes imports this module first.
TRANSPORT_ALIASES["sqla"] = "config.broker:Transport"
# Redis' own transport, but a worker that loses Redis mid-task reconnects (config/redis_transport.py).
TRANSPORT_ALIASES["redis"] = TRANSPORT_ALIASES["rediss"] = "config.redis_transport:Transport"

app = Celery("promotions")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_worker_logs(logger, **kwargs) -> None:
    """A worker replaces Django's log handlers with its own; give those the same redaction."""
    for handler in logger.handlers:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(RedactingFilter())


logger = logging.getLogger(__name__)
# After the cold stop is asked, how long before the process leaves whatever still runs: a
# thread of the thread pool cannot be stopped, and would keep the process alive.
_COLD_STOP_SECONDS = 5


@worker_shutting_down.connect
def _bound_the_warm_shutdown(sig=None, how=None, exitcode=None, **kwargs) -> None:
    """A warm shutdown (SIGTERM, Ctrl-C) waits for the running tasks, but at most
    PROMOTION_SHUTDOWN_GRACE_SECONDS: then the worker stops cold and leaves the rest to the next
    one. An apply left so is safe (its lease runs out and the sweeper or the broker hands it on;
    every MLflow write is fenced), as after kill -9."""
    if how != "Warm":
        return
    from django.conf import settings  # configured by the time a worker stops

    grace = settings.PROMOTION_SHUTDOWN_GRACE_SECONDS

    def hand_back() -> None:
        logger.warning(
            "Tasks still running %s s after the stop signal: leaving them to the next worker", grace
        )
        os.kill(os.getpid(), signal.SIGQUIT)  # Celery's cold shutdown: the broker gets them back
        time.sleep(_COLD_STOP_SECONDS)
        os._exit(1)

    timer = threading.Timer(grace, hand_back)
    timer.daemon = True
    timer.start()
