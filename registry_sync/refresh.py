"""Webhook-triggered refreshes of one model, coalesced: a storm of events costs a few syncs.

Each MLflow event names one model, and turns into a sync of that model alone
(`sync_registry(model_name=...)`: one search of the model, one of its versions, the runs of what
changed). A `PendingRefresh` row per model collapses many events into few syncs:

- no row: the event creates one (queued) and enqueues the task `registry_sync.refresh_model`;
- a queued row: its task has not started, and will read MLflow after this event: nothing is
  enqueued;
- a running row: its sync may have read MLflow before this event, so the row is marked
  `again`; when that sync ends it queues exactly one more, whatever the number of events.

The bound: per model, at most one refresh queued and one running at any moment, and they run
one after the other. A storm of events for one model lasting T seconds therefore costs at most
2 + T / d refreshes, d being the time from a refresh's end to the end of the next one (a
queue hop and one sync, a fraction of a second to a few seconds), never one per event.

A row left behind by a task that never ran (broker down at publish) or never ended (a worker
killed) would otherwise swallow every later event: after STALE_AFTER_SECONDS the next event
for the model takes it over and enqueues again. The periodic full sync catches up meanwhile.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from registry_sync.models import PendingRefresh

STALE_AFTER_SECONDS = 120

State = PendingRefresh.State


def refresh_wanted(model_name: str) -> bool:
    """Note that `model_name` changed in MLflow; True when the caller must enqueue a refresh.

    Runs inside the caller's transaction (the webhook's, with its delivery row), which must
    publish the task only once it commits.
    """
    now = timezone.now()
    row = PendingRefresh.objects.select_for_update().filter(model_name=model_name).first()
    if row is None:
        try:
            with transaction.atomic():
                PendingRefresh.objects.create(model_name=model_name, state=State.QUEUED, changed_at=now)
        except IntegrityError:
            return False  # a concurrent event created it: its refresh is queued
        return True
    stale = now - row.changed_at > timedelta(seconds=STALE_AFTER_SECONDS)
    if stale:
        row.state, row.again, row.claim, row.changed_at = State.QUEUED, False, "", now
        row.save(update_fields=["state", "again", "claim", "changed_at"])
        return True
    if row.state == State.RUNNING and not row.again:
        row.again = True
        row.save(update_fields=["again"])
    return False


def claim(model_name: str) -> str | None:
    """Take the queued refresh of `model_name`: its claim id, or None when none is queued
    (another task took it, or the message is a duplicate)."""
    token = uuid.uuid4().hex
    taken = PendingRefresh.objects.filter(model_name=model_name, state=State.QUEUED).update(
        state=State.RUNNING, again=False, claim=token, changed_at=timezone.now()
    )
    return token if taken else None


def finish(model_name: str, token: str) -> bool:
    """End the claimed refresh; True when an event arrived meanwhile and one more refresh is
    queued (the caller enqueues it once this commits)."""
    with transaction.atomic():
        row = PendingRefresh.objects.select_for_update().filter(model_name=model_name, claim=token).first()
        if row is None:
            return False  # taken over as stale: the newer claim finishes it
        if not row.again:
            row.delete()
            return False
        row.state, row.again, row.claim, row.changed_at = State.QUEUED, False, "", timezone.now()
        row.save(update_fields=["state", "again", "claim", "changed_at"])
        return True
