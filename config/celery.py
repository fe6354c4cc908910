import os

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger
from kombu.transport import TRANSPORT_ALIASES

from common.redact import RedactingFilter

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# `sqla+sqlite:///…` (the embedded default) means our SQLite broker, which redelivers, deletes
# what was consumed and lets a worker stop at once (config/broker.py); every process that
# publishes or consumes imports this module first.
TRANSPORT_ALIASES["sqla"] = "config.broker:Transport"

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
