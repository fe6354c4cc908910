"""Escalation: a request that waits longer than its stage's `escalate_after` is brought to the
stage admins' attention, once and then again every day while it still waits.

The beat task calls `requests_escalate` every PROMOTION_ESCALATE_INTERVAL_SECONDS. Each
escalation is a compare-and-set on the request's `last_escalation_at`, so two beats (or two
workers running the same beat) never tell anybody twice; the audit entry and the notification
are written in the same transaction. Expiry is untouched: an escalated request still expires
after its stage's TTL.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from promotions import audit, notifications
from promotions.models import PromotionRequest
from promotions.services.lifecycle import audit_context, meaning
from promotions.templatetags.promotions_tags import duration

Status = PromotionRequest.Status
ESCALATION_EVENT = "request.escalated"
# While it waits, the stage admins are told again this long after the last time.
ESCALATION_REPEAT = timedelta(days=1)


def escalation_due(*, now: datetime) -> Q:
    """Pending past the stage's escalate_after, and never told or told a day ago or more."""
    return Q(status=Status.PENDING, stage__escalate_after__isnull=False, escalates_at__lte=now) & (
        Q(last_escalation_at__isnull=True) | Q(last_escalation_at__lte=now - ESCALATION_REPEAT)
    )


def requests_escalate(*, now: datetime | None = None) -> int:
    """Escalate every request now due; returns how many were escalated by this call."""
    now = now or timezone.now()
    due = (
        PromotionRequest.objects.annotate(
            escalates_at=ExpressionWrapper(
                F("created_at") + F("stage__escalate_after"), output_field=DateTimeField()
            )
        )
        .filter(escalation_due(now=now))
        .select_related("version__model", "stage")
        .order_by("created_at", "pk")
    )
    return sum(request_escalate(request=request, now=now) for request in due)


def request_escalate(*, request: PromotionRequest, now: datetime) -> bool:
    """Escalate one request read as due: False when another beat escalated it first, or it
    was decided meanwhile."""
    with transaction.atomic():
        claimed = (
            PromotionRequest.objects.filter(
                pk=request.pk, status=Status.PENDING, last_escalation_at=request.last_escalation_at
            )
            if request.last_escalation_at is not None
            else PromotionRequest.objects.filter(
                pk=request.pk, status=Status.PENDING, last_escalation_at__isnull=True
            )
        ).update(
            escalated_at=Coalesce(F("escalated_at"), now),
            last_escalation_at=now,
            updated_at=now,
        )
        if not claimed:
            return False
        waiting = duration(now - request.created_at)
        first = request.escalated_at is None
        audit.record(
            action=ESCALATION_EVENT,
            meaning=meaning("Escalated", request) + f": waiting {waiting}",
            details={
                "waiting_seconds": int((now - request.created_at).total_seconds()),
                "escalate_after": str(request.stage.escalate_after),
                "first": first,
            },
            **audit_context(request),
        )
        notifications.notify(ESCALATION_EVENT, request.pk)
    return True
