from __future__ import annotations

import logging

from celery import shared_task

from registry_sync import refresh
from registry_sync.models import SyncRun
from registry_sync.services import SyncFailed, sync_delta, sync_registry

logger = logging.getLogger(__name__)


@shared_task(name="registry_sync.sync_registry")
def sync_registry_task(model_name: str | None = None, trigger: str = SyncRun.Trigger.SCHEDULE) -> int:
    """Periodic (beat) and webhook-triggered sync. A failure is recorded on its SyncRun."""
    try:
        return sync_registry(trigger=trigger, model_name=model_name).pk
    except SyncFailed as exc:
        return exc.run.pk


def enqueue_refresh(model_name: str) -> None:
    """Publish the refresh of one model; a broker failure is left to the stale-row takeover
    (registry_sync.refresh) and the periodic full sync."""
    try:
        refresh_model_task.delay(model_name)
    except Exception:  # noqa: BLE001
        logger.exception("Could not enqueue the refresh of %s", model_name)


@shared_task(name="registry_sync.refresh_model")
def refresh_model_task(model_name: str) -> int | None:
    """A webhook's refresh of one model, coalesced with the other events for it (refresh.py)."""
    token = refresh.claim(model_name)
    if token is None:
        return None
    run_id = None
    try:
        run_id = sync_registry(trigger=SyncRun.Trigger.WEBHOOK, model_name=model_name).pk
    except SyncFailed as exc:
        run_id = exc.run.pk
    finally:
        if refresh.finish(model_name, token):
            enqueue_refresh(model_name)
    return run_id


@shared_task(name="registry_sync.sync_delta")
def sync_delta_task() -> int | None:
    """Beat's delta poll (every SYNC_DELTA_INTERVAL_SECONDS): the versions MLflow updated."""
    try:
        run = sync_delta()
    except SyncFailed as exc:
        return exc.run.pk
    return run.pk if run else None
