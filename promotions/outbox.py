"""Publishing tasks from committed state, and the one backoff every retry uses.

The database is the outbox: whatever should happen next (an apply, an e-mail, a webhook
delivery) is already recorded before its task is published, so a broker that is down loses
nothing. `publish` logs the failure and returns False; each kind of work has a sweeper that
publishes again what was never picked up.
"""

from __future__ import annotations

import logging
import random

from celery import current_app

logger = logging.getLogger(__name__)


def publish(task_name: str, args: list) -> bool:
    """Send `task_name` with `args`; False (logged) when the broker cannot take it now.

    Tasks are named, not imported: the services that publish them are what the tasks call.
    """
    try:
        current_app.send_task(task_name, args=args, retry=False)
    except Exception as exc:  # noqa: BLE001 - the recorded state stands; a sweeper publishes it later
        logger.warning("Could not publish %s%s (%s); the sweeper will.", task_name, args, exc)
        return False
    return True


def backoff_delay(attempts: int, *, base: float, cap: float) -> float:
    """Exponential backoff with jitter over the upper half: base * 2**attempts, at most `cap`.

    Jitter spreads retries of many requests that failed together; the lower bound keeps a
    retry from coming back at once.
    """
    ceiling = min(cap, base * 2**attempts)
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security
