"""Break-glass: a stage admin applies a pending or scheduled request at once, and its review
comes after.

An emergency change skips the approvals and the stage's deployment windows and freezes (the
worker's freeze check lets `request.is_emergency` through), never the checks that prove the model's files
nor the catalog's checks, which the worker runs before the apply as for any request. It is
announced to every approver of the stage and every auditor, and owes a retrospective review by
as many approvers as the stage asks for (at least one) within BREAK_GLASS_REVIEW_HOURS; overdue
reviews are reminded once per BREAK_GLASS_REMIND_INTERVAL_SECONDS.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from promotions import audit, notifications, policy
from promotions.errors import AlreadyDecided, ChecksFailed, InvalidRequest
from promotions.models import MAX_TEXT, PromotionRequest, RetrospectiveReview
from promotions.selectors import overdue_reviews, overdue_words
from promotions.services.lifecycle import (
    audit_context,
    enqueue_apply,
    meaning,
    refusal,
    request_lock,
    status_set,
)
from promotions.text import clean_text

Status = PromotionRequest.Status
REMIND_TASK = "promotions.remind_retrospective_reviews"
# Beat's own jitter must not push a daily reminder to the next day.
_REMIND_SLACK = timedelta(minutes=1)


def request_break_glass(
    *, request: PromotionRequest, user, reason: str, via: str = "web"
) -> PromotionRequest:
    """pending (or scheduled) → approved at once, flagged as an emergency change; the apply is
    enqueued on commit exactly as after the last approval."""
    # Who may is answered first: whoever may not is refused (and audited) whatever they sent.
    refused = policy.break_glass_refusal(user, request)
    if refused is not None:
        raise refusal(user, request, "apply at once (emergency)", refused.reason, refused.message)
    reason = clean_text(
        reason,
        what="reason",
        max_length=MAX_TEXT,
        required="An emergency change needs a reason: say what cannot wait for the approvals.",
    )
    with transaction.atomic():
        locked = request_lock(request.pk)
        if locked.status not in PromotionRequest.EMERGENCY_FROM:
            raise AlreadyDecided(
                f"Request #{locked.pk} is already {locked.get_status_display().lower()}: "
                "only a pending or scheduled request can be applied at once."
            )
        blocker = policy.approval_blocker(locked)
        if blocker is not None:
            raise blocker
        failing = policy.failing(locked.check_results)
        if failing:
            raise ChecksFailed(
                "An emergency change skips the approvals, not the checks. Failing: " + "; ".join(failing)
            )
        now = timezone.now()
        due = now + timedelta(hours=settings.BREAK_GLASS_REVIEW_HOURS)
        required = max(policy.required_approvals(locked), 1)
        if not status_set(
            locked.pk,
            locked.status,
            Status.APPROVED,
            now=now,
            decided_at=now,
            last_error="",
            last_error_detail="",
            scheduled_for=None,
            hold_reason="",
            emergency_at=now,
            emergency_by=user,
            emergency_by_name=audit.printed_name(user),
            emergency_reason=reason,
            reviews_required=required,
            review_due_at=due,
        ):
            raise AlreadyDecided(f"Request #{locked.pk} was decided by someone else first.")
        audit.record(
            action="request.emergency",
            actor=user,
            meaning=meaning("Emergency change, applied without approvals", locked) + f": {reason}",
            details={
                "reason": reason,
                "emergency": True,
                "review_due_at": audit.utc_iso(due),
                "reviews_required": required,
                "via": via,
            },
            **audit_context(locked),
        )
        notifications.notify("promotion.emergency", locked.pk)
        transaction.on_commit(lambda: enqueue_apply(locked.pk))
    locked.refresh_from_db()
    return locked


def retrospective_review_give(
    *, request: PromotionRequest, reviewer, comment: str, via: str = "web"
) -> PromotionRequest:
    """One approver's retrospective review of an emergency change; the review is complete when
    `reviews_required` approvers have given theirs."""
    refused = policy.retrospective_refusal(reviewer, request)
    if refused is not None:
        raise refusal(reviewer, request, "review retrospectively", refused.reason, refused.message)
    comment = clean_text(
        comment,
        what="comment",
        max_length=MAX_TEXT,
        required="A retrospective review needs a comment: say whether the emergency change was right.",
    )
    with transaction.atomic():
        locked = request_lock(request.pk)
        if not locked.is_emergency:
            raise InvalidRequest(
                f"Request #{locked.pk} was not an emergency change: it has no retrospective review."
            )
        if locked.review_completed_at is not None:
            raise AlreadyDecided(f"The retrospective review of request #{locked.pk} is complete already.")
        now = timezone.now()
        try:
            with transaction.atomic():
                RetrospectiveReview.objects.create(
                    request=locked,
                    reviewer=reviewer,
                    reviewer_name=audit.printed_name(reviewer),
                    comment=comment,
                    created_at=now,
                )
        except IntegrityError:
            raise AlreadyDecided("You have already reviewed this emergency change.") from None
        given = RetrospectiveReview.objects.filter(request=locked).count()
        overdue = locked.review_overdue(now)
        audit.record(
            action="review.retrospective",
            actor=reviewer,
            meaning=meaning("Reviewed the emergency change", locked)
            + f" ({given} of {locked.reviews_required})",
            details={
                "comment": comment,
                "reviews": given,
                "required": locked.reviews_required,
                "overdue": overdue,
                "via": via,
            },
            **audit_context(locked),
        )
        complete = given >= locked.reviews_required
        fields = {"updated_at": now}
        if complete:
            fields["review_completed_at"] = now
        # Compare-and-set: the completion is recorded once, by the review that reaches the count.
        changed = PromotionRequest.objects.filter(pk=locked.pk, review_completed_at__isnull=True).update(
            **fields
        )
        if complete and changed:
            audit.record(
                action="review.retrospective_completed",
                meaning=meaning("Retrospective review complete", locked),
                details={"reviews": given, "required": locked.reviews_required, "overdue": overdue},
                **audit_context(locked),
            )
    locked.refresh_from_db()
    return locked


def retrospective_reviews_remind(*, now: datetime | None = None) -> list[int]:
    """Remind the approvers and auditors of every overdue review, once per reminder interval
    each; returns the requests reminded. Safe to run twice at once: each reminder is claimed by
    a compare-and-set on `review_reminded_at`."""
    now = now or timezone.now()
    interval = timedelta(seconds=settings.BREAK_GLASS_REMIND_INTERVAL_SECONDS)
    last_before = now - interval + _REMIND_SLACK
    due = overdue_reviews(now).filter(
        Q(review_reminded_at__isnull=True) | Q(review_reminded_at__lte=last_before)
    )
    reminded = []
    for request in due.select_related("version__model", "stage")[:500]:
        with transaction.atomic():
            claimed = PromotionRequest.objects.filter(
                pk=request.pk, review_completed_at__isnull=True, review_reminded_at=request.review_reminded_at
            ).update(review_reminded_at=now)
            if not claimed:
                continue
            given = RetrospectiveReview.objects.filter(request=request).count()
            late = now - request.review_due_at
            audit.record(
                action="review.retrospective_overdue",
                meaning=meaning(f"Retrospective review overdue by {overdue_words(late)}", request)
                + f" ({given} of {request.reviews_required} reviews)",
                details={
                    "review_due_at": audit.utc_iso(request.review_due_at),
                    "reviews": given,
                    "required": request.reviews_required,
                },
                **audit_context(request),
            )
            notifications.retrospective_overdue_notify(request.pk)
            reminded.append(request.pk)
    return reminded
