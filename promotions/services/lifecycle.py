"""Status changes of a promotion request, and the words the audit log records for them.

Every status change is a compare-and-set (`status_set`: `filter(pk=…, status=…).update(…)`):
0 rows means somebody else acted first, and nothing changes twice. Refused permissions are
audited as `auth.denied` in their own transaction, so the refusal leaves exactly that one row.
"""

from __future__ import annotations

from datetime import UTC

from django.db import transaction
from django.utils import timezone

from common import telemetry
from promotions import audit, change_windows, notifications, outbox
from promotions.errors import AlreadyDecided, NotAllowed
from promotions.models import PromotionRequest

Status = PromotionRequest.Status
APPLY_TASK = "promotions.apply_promotion"
# Leaving `applying` ends the lease: the row no longer names an attempt that holds it.
LEASE_ENDED = {"lease_token": "", "lease_expires_at": None}


def meaning(verb: str, request: PromotionRequest) -> str:
    return f"{verb}: promote {request.version.model.name} v{request.version.version} to {request.stage.name}"


def audit_context(request: PromotionRequest) -> dict:
    """The columns every audit entry about `request` carries."""
    return {
        "model_name": request.version.model.name,
        "version": request.version.version,
        "from_stage": request.source_stage,
        "to_stage": request.stage.name,
        "request_id": request.pk,
    }


def refusal(
    user, request: PromotionRequest, action: str, reason: str, message: str, *, error=NotAllowed
) -> NotAllowed:
    """Audit `user`'s refused `action` on `request`; return the error (`error`) to raise."""
    audit.record_denied(
        actor=user,
        what=f"{action} request #{request.pk}",
        reason=reason,
        model_name=request.version.model.name,
        version=request.version.version,
        to_stage=request.stage.name,
        request_id=request.pk,
    )
    return error(message)


# The request's own row only, and as FOR NO KEY UPDATE: PostgreSQL checks foreign keys at COMMIT
# with key-share locks, after the committing transaction has taken the audit chain's head. A
# lock on the request's stage, version or model (FOR UPDATE reaches every joined table), held
# while waiting for that head, made the two transactions wait for each other.
ROW_LOCK = {"no_key": True, "of": ("self",)}


def request_lock(request_id: int) -> PromotionRequest:
    return (
        PromotionRequest.objects.select_for_update(**ROW_LOCK)
        .select_related("version__model", "stage")
        .get(pk=request_id)
    )


def status_set(
    request_id: int,
    old: str | tuple[str, ...],
    new: str,
    *,
    now=None,
    held_by: str | None = None,
    **fields,
) -> bool:
    """Compare-and-set: move the request from `old` (one status or several) to `new`, with
    `fields`; False when another actor moved it first.

    `held_by` is an apply attempt's lease token: the change is made only while that attempt
    still holds the request, so an attempt that was taken over changes nothing.
    """
    old = (old,) if isinstance(old, str) else old
    rows = PromotionRequest.objects.filter(pk=request_id, status__in=old)
    if held_by is not None:
        rows = rows.filter(lease_token=held_by)
    return bool(rows.update(status=new, updated_at=now or timezone.now(), **fields))


# A decision ends the wait for reviewers: its audit action, the audit log's words, and the event
# sent to e-mail and webhooks, in one place for every way a request is decided.
_DECISIONS = {
    Status.APPROVED: ("request.approved", "Approved for promotion", "request.approved"),
    Status.REJECTED: ("review.rejected", "Rejected", "request.rejected"),
    Status.CANCELLED: ("request.cancelled", "Cancelled", "request.cancelled"),
    Status.EXPIRED: ("request.expired", "Expired", "request.expired"),
}


def request_decide(
    request: PromotionRequest,
    old: str | tuple[str, ...],
    new: str,
    *,
    actor=None,
    details: dict | None = None,
    now=None,
) -> bool:
    """Move `request` from `old` to the decision `new`, record it in the audit log and announce
    it: the three together in the caller's transaction, or nothing at all when another actor
    moved the request first (False)."""
    now = now or timezone.now()
    # An approval ends what stood in the way before (a reopened request's reason): from here on
    # last_error is the apply's, which the page reads as "retrying" while attempts remain.
    cleared = {"last_error": "", "last_error_detail": ""} if new == Status.APPROVED else {}
    if not status_set(request.pk, old, new, now=now, decided_at=now, **cleared):
        return False
    action, verb, event = _DECISIONS[new]
    audit.record(
        action=action,
        actor=actor,
        meaning=meaning(verb, request),
        details=details or {},
        **audit_context(request),
    )
    notifications.notify(event, request.pk)
    return True


def request_approve_for_apply(
    request: PromotionRequest, *, actor, reason: str, respect_hold: bool = True
) -> None:
    """pending → approved, then publish the apply once the transaction commits; or, outside the
    stage's deployment windows or during a freeze, on to scheduled (the beat releases it).

    `respect_hold=False` is for a change that must not wait for a window (an emergency).
    """
    now = timezone.now()
    if not request_decide(
        request, Status.PENDING, Status.APPROVED, actor=actor, details={"reason": reason}, now=now
    ):
        raise AlreadyDecided(f"Request #{request.pk} was decided by someone else first.")
    waited, stage_name = max((now - request.created_at).total_seconds(), 0.0), request.stage.name
    transaction.on_commit(lambda: telemetry.APPROVAL_LEAD_TIME.labels(stage=stage_name).observe(waited))
    hold = change_windows.apply_hold(request.stage, timezone.now()) if respect_hold else None
    if hold is not None:
        request_schedule(request, old=Status.APPROVED, hold=hold)
        return
    transaction.on_commit(lambda: enqueue_apply(request.pk))


def scheduled_meaning(request: PromotionRequest, hold: change_windows.Hold) -> str:
    """'Scheduled: promote m v5 to Production: Outside the stage's deployment windows; applies
    at Tue 09:00 CET (2027-03-30 07:00 UTC)' — local time of the stage, and UTC."""
    text = meaning("Scheduled", request) + f": {hold.sentence}"
    if hold.until is None:
        return text + "; no opening in reach"
    local = hold.until.astimezone(change_windows.zone_get(hold.time_zone)).strftime("%a %-d %b %H:%M %Z")
    return text + f"; applies at {local} ({hold.until.astimezone(UTC).strftime('%Y-%m-%d %H:%M')} UTC)"


def request_schedule(
    request: PromotionRequest,
    *,
    old: str,
    hold: change_windows.Hold,
    held_by: str | None = None,
    **fields,
) -> bool:
    """approved (or, at the worker's claim, applying) → scheduled until the hold ends, audited.

    False when another actor moved the request first, or (with `held_by`) when that apply
    attempt no longer holds it.
    """
    if held_by is not None:
        fields.update(LEASE_ENDED)
    if not status_set(
        request.pk,
        old,
        Status.SCHEDULED,
        held_by=held_by,
        scheduled_for=hold.until,
        hold_reason=hold.sentence[:700],
        enqueued_at=None,
        **fields,
    ):
        return False
    audit.record(
        action="request.scheduled",
        meaning=scheduled_meaning(request, hold),
        details={
            "hold": hold.kind,
            "scheduled_for": audit.utc_iso(hold.until) if hold.until else None,
            "time_zone": hold.time_zone,
            "reason": hold.reason,
            **({"frozen_until": audit.utc_iso(hold.frozen_until)} if hold.frozen_until else {}),
        },
        **audit_context(request),
    )
    return True


def enqueue_apply(request_id: int) -> bool:
    """Publish the apply task. A broker failure is logged; the sweeper publishes it later."""
    if not outbox.publish(APPLY_TASK, [request_id]):
        return False
    PromotionRequest.objects.filter(pk=request_id).update(enqueued_at=timezone.now())
    return True


def request_reopen(
    request: PromotionRequest, *, old: str | tuple[str, ...], reason: str, held_by: str | None = None
) -> bool:
    """Back to pending (approved, scheduled or applying → pending): its approvals no longer suffice.

    The reason is kept on the request for its page; False when someone else moved it first (or,
    with `held_by`, when that apply attempt no longer holds the request).
    """
    now = timezone.now()
    if not status_set(
        request.pk,
        old,
        Status.PENDING,
        now=now,
        held_by=held_by,
        decided_at=None,
        enqueued_at=None,
        scheduled_for=None,
        hold_reason="",
        last_error=reason,
        last_error_detail="",
        **LEASE_ENDED,
    ):
        return False
    audit.record(
        action="request.reopened",
        meaning=meaning("Waiting for approvals again", request) + f": {reason}",
        details={"reason": reason},
        **audit_context(request),
    )
    return True
