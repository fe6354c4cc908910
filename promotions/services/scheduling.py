"""Scheduled requests and freezes: releasing what a window let through, adding and lifting freezes.

The beat runs `scheduled_release` every PROMOTION_SCHEDULE_INTERVAL_SECONDS: it asks, for each
scheduled request, whether its stage still holds it back; a request no longer held goes
scheduled → approved (a compare-and-set) and its apply is published on commit. Nothing sleeps:
a worker or beat restarted in between finds the same rows on its next run.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial

from django.db import transaction
from django.utils import timezone

from promotions import audit, change_windows
from promotions.errors import InvalidRequest
from promotions.models import Freeze, PromotionRequest, Stage
from promotions.services.lifecycle import (
    audit_context,
    enqueue_apply,
    meaning,
    scheduled_meaning,
    status_set,
)
from promotions.text import clean_text

Status = PromotionRequest.Status
# Requests released by one run at most; the next run takes the rest.
RELEASE_BATCH = 500


def scheduled_release(*, now: datetime | None = None) -> list[int]:
    """Release the scheduled requests whose stage no longer holds them back at `now` (the clock
    of the decision; a test passes its own). Returns the released ids.

    A request still held whose opening moved (a freeze added, a window changed) gets its new
    time and reason, audited as `request.rescheduled`.
    """
    now = now or timezone.now()
    holds: dict[int, change_windows.Hold | None] = {}
    released = []
    scheduled = PromotionRequest.objects.filter(status=Status.SCHEDULED).select_related(
        "version__model", "stage"
    )
    for request in scheduled.order_by("scheduled_for", "pk")[:RELEASE_BATCH]:
        if request.stage_id not in holds:
            holds[request.stage_id] = change_windows.apply_hold(request.stage, now)
        hold = holds[request.stage_id]
        with transaction.atomic():
            if hold is None:
                if _release(request, now):
                    released.append(request.pk)
            elif hold.until != request.scheduled_for or hold.sentence != request.hold_reason:
                _reschedule(request, hold)
    return released


def _release(request: PromotionRequest, now: datetime) -> bool:
    if not status_set(
        request.pk, Status.SCHEDULED, Status.APPROVED, scheduled_for=None, hold_reason="", enqueued_at=None
    ):
        return False
    audit.record(
        action="request.released",
        meaning=meaning("Released to the worker", request) + ": its deployment window is open",
        details={
            "scheduled_for": audit.utc_iso(request.scheduled_for) if request.scheduled_for else None,
            "released_at": audit.utc_iso(now),
        },
        **audit_context(request),
    )
    transaction.on_commit(partial(enqueue_apply, request.pk))
    return True


def _reschedule(request: PromotionRequest, hold: change_windows.Hold) -> bool:
    # Compare-and-set on the time read: a concurrent run that moved it first wins.
    changed = PromotionRequest.objects.filter(
        pk=request.pk, status=Status.SCHEDULED, scheduled_for=request.scheduled_for
    ).update(scheduled_for=hold.until, hold_reason=hold.sentence[:700], updated_at=timezone.now())
    if not changed:
        return False
    audit.record(
        action="request.rescheduled",
        meaning=scheduled_meaning(request, hold),
        details={
            "hold": hold.kind,
            "scheduled_for": audit.utc_iso(hold.until) if hold.until else None,
            "was": audit.utc_iso(request.scheduled_for) if request.scheduled_for else None,
            "reason": hold.reason,
        },
        **audit_context(request),
    )
    return True


def _freeze_words(freeze: Freeze) -> str:
    zone = change_windows.zone_get(change_windows.stage_zone_name(freeze.stage))
    starts = freeze.starts_at.astimezone(zone).strftime("%-d %b %Y %H:%M")
    ends = freeze.ends_at.astimezone(zone).strftime("%-d %b %Y %H:%M %Z")
    return f"{starts} until {ends}: {freeze.reason}"


def freeze_add(*, stage: Stage, starts_at: datetime, ends_at: datetime, reason: str, actor) -> Freeze:
    """Freeze `stage` from `starts_at` until `ends_at`; requests approved meanwhile wait."""
    reason = clean_text(reason, what="reason", max_length=500, required="A freeze needs a reason.")
    if timezone.is_naive(starts_at) or timezone.is_naive(ends_at):
        raise InvalidRequest("A freeze's times need a time zone.")
    if ends_at <= starts_at:
        raise InvalidRequest("A freeze ends after it starts.")
    with transaction.atomic():
        freeze = Freeze.objects.create(
            stage=stage,
            starts_at=starts_at,
            ends_at=ends_at,
            reason=reason,
            created_by=actor,
            created_by_name=audit.printed_name(actor) if actor is not None else "",
            created_at=timezone.now(),
        )
        audit.record(
            action="stage.frozen",
            actor=actor,
            meaning=f"Stage {stage.name} frozen from {_freeze_words(freeze)}",
            to_stage=stage.name,
            details={
                "freeze_id": freeze.pk,
                "starts_at": audit.utc_iso(starts_at),
                "ends_at": audit.utc_iso(ends_at),
                "reason": reason,
            },
        )
    return freeze


def freeze_remove(*, freeze: Freeze, actor) -> None:
    """Lift a freeze; the requests it held are released by the beat's next run."""
    with transaction.atomic():
        audit.record(
            action="stage.unfrozen",
            actor=actor,
            meaning=f"Freeze of stage {freeze.stage.name} lifted (was {_freeze_words(freeze)})",
            to_stage=freeze.stage.name,
            details={
                "freeze_id": freeze.pk,
                "starts_at": audit.utc_iso(freeze.starts_at),
                "ends_at": audit.utc_iso(freeze.ends_at),
                "reason": freeze.reason,
            },
        )
        freeze.delete()
