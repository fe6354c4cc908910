"""Publishing tasks from committed state, and the one backoff every retry uses.

The database is the outbox: whatever should happen next (an apply, an e-mail, a webhook
delivery) is already recorded before its task is published, so a broker that is down loses
nothing. `publish` logs the failure and returns False; each kind of work has a sweeper that
publishes again what was never picked up (`sweep`, for work whose task takes the row's pk).
"""

from __future__ import annotations

import logging
import random
from typing import Protocol

from celery import Task, current_app
from django.db.models import QuerySet

logger = logging.getLogger(__name__)

# Rows published by one sweep at most: a long outage is caught up over a few runs instead of
# one run that floods the broker.
SWEEP_BATCH = 500


def publish(task_name: str, args: list) -> bool:
    """Send `task_name` with `args`; False (logged) when the broker cannot take it now.

    Tasks are named, not imported: the services that publish them are what the tasks call.
    """
    try:
        current_app.send_task(task_name, args=args)  # retried once (CELERY_TASK_PUBLISH_RETRY_POLICY)
    except Exception as exc:  # noqa: BLE001 - the recorded state stands; a sweeper publishes it later
        logger.warning("Could not publish %s%s (%s); the sweeper will.", task_name, args, exc)
        return False
    return True


def sweep(queryset: QuerySet, task_name: str) -> list[int]:
    """Publish `task_name` with the pk of each row of `queryset` (the stuck ones, at most
    SWEEP_BATCH); returns the pks. A row's first task may only be late, not lost: the task
    must bear running twice (an e-mail claims its row; a webhook keeps its delivery id)."""
    pks = list(queryset.values_list("pk", flat=True)[:SWEEP_BATCH])
    for pk in pks:
        publish(task_name, [pk])
    return pks


class Attempt(Protocol):
    status: str
    retry_in: float | None


def task_result(task: Task, attempt: Attempt | None) -> str:
    """What the task that made one attempt at a recorded row answers: "skipped" when there was
    nothing (left) to do, a Celery retry after the attempt's delay, or the row's new status."""
    if attempt is None:
        return "skipped"
    if attempt.retry_in is not None:
        raise task.retry(countdown=attempt.retry_in)
    return attempt.status


def backoff_delay(attempts: int, *, base: float, cap: float) -> float:
    """Exponential backoff with jitter over the upper half: base * 2**attempts, at most `cap`.

    Jitter spreads retries of many requests that failed together; the lower bound keeps a
    retry from coming back at once.
    """
    ceiling = min(cap, base * 2**attempts)
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security
