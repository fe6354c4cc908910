"""Reads: what pages, the API and the CLI show. No writes here."""

from __future__ import annotations

from dataclasses import dataclass

from promotions import roles
from registry_sync.models import SyncRun


@dataclass(frozen=True)
class Frame:
    actionable: int
    roles: list[str]
    is_auditor: bool
    registry_error: str
    last_sync_at: object


def frame_for_user(user) -> Frame:
    from promotions.policy import actionable_requests

    last = SyncRun.objects.filter(finished_at__isnull=False).only("error", "finished_at").first()
    last_good = (
        SyncRun.objects.filter(finished_at__isnull=False, error="").only("finished_at").first()
        if last and last.error
        else last
    )
    return Frame(
        actionable=actionable_requests(user).count(),
        roles=sorted(roles.role_names(user)),
        is_auditor=roles.has_role(user, roles.AUDITORS),
        registry_error=last.error if last and last.error else "",
        last_sync_at=last_good.finished_at if last_good else None,
    )


def queue_rows(user):
    from promotions.models import PromotionRequest

    return (
        PromotionRequest.objects.filter(status__in=PromotionRequest.OPEN_STATUSES)
        .select_related("version__model", "stage")
        .order_by("-created_at")[:50]
    )


def stage_history(model) -> dict[str, list[dict]]:
    """Which version held each stage, newest first, from the applied requests."""
    from django.urls import reverse

    from promotions.models import PromotionRequest

    history: dict[str, list[dict]] = {}
    applied = (
        PromotionRequest.objects.filter(version__model=model, status=PromotionRequest.Status.APPLIED)
        .select_related("stage", "version")
        .prefetch_related("reviews")
        .order_by("-applied_at")[:100]
    )
    for request in applied:
        entries = history.setdefault(request.stage.name, [])
        approvers = [
            r.reviewer_name for r in request.reviews.all() if r.decision == "approve" and not r.stale
        ]
        entries.append(
            {
                "version": request.version.version,
                "since": request.applied_at,
                "request_id": request.pk,
                "approvers": approvers,
                "rollback_url": (
                    f"{reverse('request_create')}?model={model.name}&version={request.version.version}"
                    f"&stage={request.stage.name}&rollback=1"
                ),
            }
        )
    return history
