"""Applying approved requests to MLflow: claim, check the preconditions, write, record.

An approved request is the outbox: its task is published on commit, and `requests_sweep`
publishes again what no worker picked up. `promotion_apply` is idempotent: a second run finds
the binding in place and writes nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from config.redact import redact
from promotions import audit, catalog, notifications, outbox, policy
from promotions.errors import TransientApplyError
from promotions.models import PromotionRequest, Stage
from promotions.services.lifecycle import audit_context, enqueue_apply, meaning, request_reopen, status_set
from registry_sync import gateway
from registry_sync.models import ModelVersion, RegisteredModel

Status = PromotionRequest.Status


def requests_sweep(*, now=None) -> list[int]:
    """Re-enqueue approved requests nobody picked up, and applying ones with no live attempt."""
    now = now or timezone.now()
    stuck_before = now - timedelta(seconds=settings.PROMOTION_STUCK_AFTER_SECONDS)
    ids = list(
        PromotionRequest.objects.filter(
            Q(status=Status.APPROVED, enqueued_at__isnull=True)
            | Q(status=Status.APPROVED, enqueued_at__lt=stuck_before)
            | Q(status=Status.APPLYING, updated_at__lt=stuck_before)
        ).values_list("pk", flat=True)[:500]
    )
    for request_id in ids:
        enqueue_apply(request_id)
    return ids


def apply_retry_scheduled(*, request_id: int, delay: float) -> None:
    """Hold the sweeper off until the task's own retry, `delay` seconds away, has had its chance."""
    PromotionRequest.objects.filter(pk=request_id).update(
        enqueued_at=timezone.now() + timedelta(seconds=delay)
    )


def retry_delay(attempts: int) -> float:
    """The wait before retry `attempts`, capped below the broker's visibility timeout."""
    return outbox.backoff_delay(
        attempts, base=settings.PROMOTION_RETRY_BASE_SECONDS, cap=settings.PROMOTION_RETRY_CAP_SECONDS
    )


def _claim(request_id: int) -> PromotionRequest | None:
    """approved → applying (or take over an abandoned applying); None when not ours to do."""
    now = timezone.now()
    stuck_before = now - timedelta(seconds=settings.PROMOTION_STUCK_AFTER_SECONDS)
    claimed = PromotionRequest.objects.filter(pk=request_id, status=Status.APPROVED).update(
        status=Status.APPLYING, attempts=F("attempts") + 1, updated_at=now
    )
    if not claimed:
        claimed = PromotionRequest.objects.filter(
            pk=request_id, status=Status.APPLYING, updated_at__lt=stuck_before
        ).update(attempts=F("attempts") + 1, updated_at=now)
    if not claimed:
        return None
    return PromotionRequest.objects.select_related("version__model", "stage").get(pk=request_id)


def _fail(request: PromotionRequest, reason: str, *, permanent: bool = True) -> None:
    # The reason lands in the immutable audit log: nothing that could be a credential may reach it.
    reason = redact(reason)
    now = timezone.now()
    with transaction.atomic():
        changed = status_set(request.pk, Status.APPLYING, Status.FAILED, now=now, last_error=reason[:2000])
        if changed:
            audit.record(
                action="promotion.failed",
                meaning=meaning("Failed", request) + f": {reason}",
                details={"reason": reason, "attempts": request.attempts, "permanent": permanent},
                **audit_context(request),
            )
            notifications.notify("promotion.failed", request.pk)


def _approvers(request: PromotionRequest) -> list[str] | None:
    """The names of the approvals that count now, or None when too few still count: an approver
    left (deactivated, or out of the approver groups), or the policy asks for more."""
    approvals = policy.counting_approvals(request)
    if len(approvals) < policy.required_approvals(request):
        return None
    return [review.reviewer_name for review in approvals]


def promotion_apply(*, request_id: int) -> str:
    """Apply one approved request to MLflow. Idempotent; returns what happened.

    Raises TransientApplyError when MLflow is unreachable and attempts remain.
    """
    request = _claim(request_id)
    if request is None:
        current = PromotionRequest.objects.filter(pk=request_id).values_list("status", flat=True).first()
        return f"skipped ({current or 'missing'})"
    if request.attempts > settings.PROMOTION_MAX_ATTEMPTS:
        _fail(request, f"gave up after {settings.PROMOTION_MAX_ATTEMPTS} attempts")
        return "failed"
    stage, model_name, number = request.stage, request.version.model.name, request.version.version
    approvers = _approvers(request)
    if approvers is None:
        with transaction.atomic():
            request_reopen(
                request,
                old=Status.APPLYING,
                reason=f"{len(policy.counting_approvals(request))} of the "
                f"{policy.required_approvals(request)} approvals needed still count",
            )
        return "reopened"
    try:
        outcome = _apply_to_registry(request, approvers)
    except gateway.RegistryUnavailable as exc:
        reason = redact(str(exc))
        if request.attempts >= settings.PROMOTION_MAX_ATTEMPTS:
            _fail(request, f"MLflow unreachable after {request.attempts} attempts: {reason}")
            return "failed"
        status_set(request.pk, Status.APPLYING, Status.APPROVED, last_error=reason[:2000])
        raise TransientApplyError(reason, request.attempts) from None
    except gateway.RegistryPermissionDenied as exc:
        _fail(request, str(exc))
        return "failed"
    except (gateway.VersionNotFound, gateway.ModelNotFound):
        _fail(request, f"Version {number} of model '{model_name}' no longer exists in MLflow.")
        return "failed"
    except gateway.RegistryRejected as exc:
        _fail(request, f"MLflow refused the change: {exc}")
        return "failed"
    except _PreconditionFailed as exc:
        _fail(request, str(exc))
        return "failed"

    now = timezone.now()
    with transaction.atomic():
        changed = status_set(
            request.pk, Status.APPLYING, Status.APPLIED, now=now, applied_at=now, last_error=""
        )
        if not changed:
            return "lost the claim"
        _update_mirror(request, outcome)
        audit.record(
            action="promotion.applied",
            meaning=meaning("Applied", request),
            details={
                "previous_holders": outcome.previous_holders,
                "archived": outcome.archived,
                "already_in_place": outcome.already_in_place,
                "approved_by": approvers,
                "attempts": request.attempts,
                "binding": stage.binding_label,
            },
            **audit_context(request),
        )
        notifications.notify("promotion.applied", request.pk)
    return "applied"


class _PreconditionFailed(Exception):
    pass


@dataclass
class _Outcome:
    previous_holders: list[int]
    archived: list[int]
    already_in_place: bool
    live: gateway.ModelVersionInfo | None = None


def _read_candidate(
    stage: Stage, model_name: str, number: int, stages: list[Stage]
) -> tuple[gateway.ModelVersionInfo, list[gateway.ModelVersionInfo] | None]:
    """The version as MLflow has it now, and (for a legacy-stage target) all the model's versions.

    One `search_model_versions` answers both for a legacy-stage target, except that MLflow's
    search leaves out aliases: when the catalog binds any stage to an alias, the version's
    position depends on them, so it is read on its own (`get_model_version`) as well.
    """
    versions = None
    if stage.mlflow_stage and stage.mlflow_stage not in ("None", "Archived"):
        versions = [v for page in gateway.iter_model_version_pages(name=model_name) for v in page]
    if versions is None or any(s.mlflow_alias for s in stages):
        return gateway.get_model_version(model_name, number), versions
    for version in versions:
        if version.version == number:
            return version, versions
    raise gateway.VersionNotFound(f"Version {number} of model '{model_name}' does not exist in MLflow.")


def _apply_to_registry(request: PromotionRequest, approvers: list[str]) -> _Outcome:
    """Check the preconditions against MLflow, then bind the stage and tag the version.

    MLflow calls: the reads of `_read_candidate` (one, or two when the catalog has alias
    stages), the run when a check needs its metrics, the previous alias holder for an alias
    target, then the transition and/or alias move and the four provenance tags.
    """
    stage, model_name, number = request.stage, request.version.model.name, request.version.version
    stages = list(Stage.objects.prefetch_related("allowed_from"))
    live, versions = _read_candidate(stage, model_name, number, stages)
    if live.status and live.status != "READY":
        raise _PreconditionFailed(f"{model_name} v{number} is {live.status} in MLflow, not READY.")
    tags = {
        "promotion.request_id": str(request.pk),
        "promotion.stage": stage.name,
        "promotion.approved_by": ",".join(approvers) or "automatic",
        "promotion.applied_at": audit.utc_iso(timezone.now()),
    }
    if catalog.holds_target(stage, current_stage=live.current_stage, aliases=live.aliases):
        # A crash after the MLflow write and before our commit: finish without a second move,
        # writing the provenance tags if the crash came before them.
        if live.tags.get("promotion.request_id") != tags["promotion.request_id"]:
            gateway.set_version_tags(model_name, number, tags)
        return _Outcome(previous_holders=[], archived=[], already_in_place=True, live=live)
    positions = catalog.version_positions(
        current_stage=live.current_stage, aliases=live.aliases, stages=stages
    )
    rollback = bool(request.evidence.get("rollback"))
    if not rollback and not catalog.transition_allowed(stage, positions):
        raise _PreconditionFailed(
            f"{model_name} v{number} is now in {', '.join(positions) or 'no stage'} in MLflow; "
            f"{stage.name} may be reached from {catalog.describe_allowed_from(stage)}."
        )
    # The run is read only when a rule needs its metrics: one MLflow call less otherwise.
    needs_run = any(rule.split(None, 1)[0] == "metric" for rule in stage.check_rules())
    run = gateway.get_run_data(live.run_id) if needs_run else gateway.RunData()
    results = policy.evaluate_checks(stage, metrics=run.metrics, tags=live.tags, evidence=request.ci_evidence)
    failing = policy.failing(results)
    if failing:
        raise _PreconditionFailed("Checks no longer pass: " + "; ".join(failing))

    previous, archived = [], []
    if stage.mlflow_stage:
        previous = [
            v.version for v in versions or () if v.current_stage == stage.mlflow_stage and v.version != number
        ]
        if live.current_stage != stage.mlflow_stage:
            gateway.transition_stage(
                model_name, number, stage.mlflow_stage, archive_existing=stage.archive_existing
            )
            if stage.archive_existing:
                archived = previous
    if stage.mlflow_alias and stage.mlflow_alias not in live.aliases:
        holder = gateway.get_version_by_alias(model_name, stage.mlflow_alias)
        if holder is not None and holder.version not in previous:
            previous.append(holder.version)
        gateway.set_alias(model_name, stage.mlflow_alias, number)
    gateway.set_version_tags(model_name, number, tags)
    return _Outcome(
        previous_holders=sorted(previous), archived=sorted(archived), already_in_place=False, live=live
    )


def _update_mirror(request: PromotionRequest, outcome: _Outcome) -> None:
    """Record in the mirror what we just did, so the next sync sees no drift."""
    stage, version = request.stage, request.version
    model = RegisteredModel.objects.select_for_update().get(pk=version.model_id)
    if stage.mlflow_stage:
        if outcome.archived:
            ModelVersion.objects.filter(model=model, version__in=outcome.archived).update(
                current_stage="Archived"
            )
        ModelVersion.objects.filter(pk=version.pk).update(current_stage=stage.mlflow_stage)
    if stage.mlflow_alias:
        aliases = dict(model.aliases or {})
        aliases[stage.mlflow_alias] = version.version
        RegisteredModel.objects.filter(pk=model.pk).update(aliases=aliases)
        for row in ModelVersion.objects.filter(model=model, aliases__isnull=False).only(
            "pk", "aliases", "version"
        ):
            wanted = (
                sorted({*row.aliases, stage.mlflow_alias})
                if row.version == version.version
                else sorted(a for a in row.aliases if a != stage.mlflow_alias)
            )
            if wanted != row.aliases:
                ModelVersion.objects.filter(pk=row.pk).update(aliases=wanted)
