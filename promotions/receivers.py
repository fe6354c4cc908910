"""What a registry sync means for promotions: stale evidence, and drift.

The mirror (registry_sync) announces what changed through its signals and knows nothing of
requests; these receivers, connected in PromotionsConfig.ready(), decide what it means here.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from promotions import audit
from promotions.models import PromotionRequest
from promotions.services import requests_refresh_evidence
from promotions.services.enforcement import drift_respond, reverted_by_us
from registry_sync.models import DriftEvent, RegisteredModel, SyncRun
from registry_sync.services import drift_event_create

Status = PromotionRequest.Status


def refresh_evidence(sender: type[SyncRun], *, version_ids: frozenset[int], **kwargs) -> int:
    """Pending requests on changed versions may now rest on stale evidence."""
    return requests_refresh_evidence(version_ids=set(version_ids))


def record_drift_unless_ours(
    sender: type[RegisteredModel], *, model: RegisteredModel, **change
) -> DriftEvent | None:
    """Record a stage or alias change no request (or revert) of ours made: the mirror's drift
    event and flag, the `registry.drift` audit entry, and what enforcement does about it.
    Returns the event (the sync counts it), or None.

    `change` carries the binding_changed arguments: version, kind, alias, before, after,
    mlflow_timestamp.
    """
    change.pop("signal", None)
    if _is_ours(model, **change):
        return None
    event = drift_event_create(model=model, **change)
    audit.record(
        action="registry.drift",
        meaning=f"Drift: {model.name} {event.describe()}",
        model_name=model.name,
        version=event.version,
        from_stage=event.before if event.kind == DriftEvent.Kind.STAGE else f"@{event.alias}",
        to_stage=event.after if event.kind == DriftEvent.Kind.STAGE else f"@{event.alias}",
        details={
            "kind": event.kind,
            "alias": event.alias,
            "before": event.before,
            "after": event.after,
            "mlflow_timestamp": event.mlflow_timestamp,
        },
    )
    # The announcement, and in a revert stage the worker's revert: scheduled, never done here.
    drift_respond(event)
    return event


def _is_ours(
    model: RegisteredModel, version: int | None, *, kind: str, alias: str, before: str, after: str, **_
) -> bool:
    if reverted_by_us(model, version, kind=kind, alias=alias, after=after):
        return True
    if kind == DriftEvent.Kind.STAGE:
        if _applied_by_us(model, version, stage=after):
            return True
        return after == "Archived" and _archived_by_us(model, previous_stage=before)
    # An alias that was removed has no new holder a request of ours could have put there.
    return bool(after) and _applied_by_us(model, version, alias=alias)


def _recent() -> datetime:
    return timezone.now() - timedelta(seconds=settings.PROMOTION_DRIFT_WINDOW_SECONDS)


def _applied_by_us(model: RegisteredModel, version: int | None, *, stage: str = "", alias: str = "") -> bool:
    """A change is ours when a request of ours for that version and binding is in flight."""
    in_flight = PromotionRequest.objects.filter(
        version__model=model,
        version__version=version,
        status__in=[Status.APPROVED, Status.APPLYING, Status.APPLIED],
    )
    if stage:
        in_flight = in_flight.filter(stage__mlflow_stage=stage)
    if alias:
        in_flight = in_flight.filter(stage__mlflow_alias=alias)
    return in_flight.filter(updated_at__gte=_recent()).exists()


def _archived_by_us(model: RegisteredModel, *, previous_stage: str) -> bool:
    """Archiving the previous holder is a side effect of one of our promotions."""
    return PromotionRequest.objects.filter(
        version__model=model,
        stage__mlflow_stage=previous_stage,
        stage__archive_existing=True,
        status__in=[Status.APPLYING, Status.APPLIED],
        updated_at__gte=_recent(),
    ).exists()
