from __future__ import annotations

from celery import shared_task

from registry_sync.models import SyncRun
from registry_sync.services import SyncFailed, sync_registry


@shared_task(name="registry_sync.sync_registry")
def sync_registry_task(model_name: str | None = None, trigger: str = SyncRun.Trigger.SCHEDULE) -> int:
    """Periodic (beat) and webhook-triggered sync. A failure is recorded on its SyncRun."""
    try:
        return sync_registry(trigger=trigger, model_name=model_name).pk
    except SyncFailed as exc:
        return exc.run.pk
