"""Every write of the promotion workflow: one function, one transaction, one audit event.

Status changes are compare-and-set (`_set_status`: `filter(pk=…, status=…).update(…)`): 0 rows means
somebody else acted first, and nothing changes twice. Refused permissions are audited as
`auth.denied` in their own transaction, so the refusal leaves exactly that one row behind.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from promotions import audit, notifications, policy
from promotions.errors import (
    AlreadyDecided,
    ChecksFailed,
    DuplicateRequest,
    InvalidRequest,
    NotAllowed,
    PromotionError,
    TransientApplyError,
    UnknownStage,
    UnknownVersion,
)
from promotions.models import PromotionRequest, Review, Stage
from registry_sync import gateway
from registry_sync.models import ModelVersion, RegisteredModel, SyncRun

logger = logging.getLogger(__name__)
Status = PromotionRequest.Status
MAX_TEXT = 10_000


# --- lookups ----------------------------------------------------------------------------------


def stage_get_by_name(name: str) -> Stage:
    stage = Stage.objects.filter(name__iexact=(name or "").strip()).first()
    if stage is None:
        known = ", ".join(Stage.objects.filter(is_active=True).values_list("name", flat=True))
        raise UnknownStage(f"Stage '{name}' is not in the stage catalog. Known stages: {known}.")
    return stage


def version_get(*, model_name: str, version: int, refresh: bool = True) -> ModelVersion:
    """The mirrored version; refreshed from MLflow first so a just-registered version is found."""
    if refresh:
        from registry_sync.services import SyncFailed, sync_registry

        try:
            sync_registry(trigger=SyncRun.Trigger.REQUEST, model_name=model_name)
        except SyncFailed as exc:
            logger.warning("Using the mirror as it is; MLflow refresh failed: %s", exc)
    row = (
        ModelVersion.objects.select_related("model")
        .filter(model__name=model_name, version=version, is_deleted=False)
        .first()
    )
    if row is not None:
        return row
    model = RegisteredModel.objects.filter(name=model_name, is_deleted=False).first()
    if model is None:
        raise UnknownVersion(f"Model '{model_name}' is not in the MLflow registry.")
    latest = (
        model.versions.filter(is_deleted=False).order_by("-version").values_list("version", flat=True).first()
    )
    hint = f" (latest is v{latest})" if latest else ""
    raise UnknownVersion(f"Version {version} of model '{model_name}' does not exist in MLflow{hint}.")


# --- where a version stands -------------------------------------------------------------------


def version_positions(
    *, current_stage: str, aliases: list[str], stages: list[Stage] | None = None
) -> list[str]:
    """The catalog stages a version holds now (by legacy stage or alias)."""
    stages = stages if stages is not None else list(Stage.objects.all())
    held = []
    for stage in stages:
        by_stage = bool(stage.mlflow_stage) and stage.mlflow_stage == current_stage
        by_alias = bool(stage.mlflow_alias) and stage.mlflow_alias in aliases
        if stage.mlflow_stage and stage.mlflow_alias:
            if by_stage and by_alias:
                held.append(stage.name)
        elif by_stage or by_alias:
            held.append(stage.name)
    return held


def holds_target(stage: Stage, *, current_stage: str, aliases: list[str]) -> bool:
    return stage.name in version_positions(current_stage=current_stage, aliases=aliases, stages=[stage])


def transition_allowed(stage: Stage, positions: list[str]) -> bool:
    allowed = [s.name for s in stage.allowed_from.all()]
    if not allowed and not stage.allow_from_none:
        return True
    if not positions:
        return stage.allow_from_none
    return any(name in allowed for name in positions)


def describe_allowed_from(stage: Stage) -> str:
    names = [s.name for s in stage.allowed_from.all()]
    if stage.allow_from_none:
        names.insert(0, "no stage")
    return ", ".join(names) if names else "any stage"


def current_holder(stage: Stage, model: RegisteredModel, *, exclude_version: int | None = None):
    """The version that holds the target stage (or alias) now, if any."""
    if stage.mlflow_alias and stage.mlflow_alias in (model.aliases or {}):
        number = model.aliases[stage.mlflow_alias]
    elif stage.mlflow_stage and stage.mlflow_stage not in ("None", "Archived"):
        number = (
            ModelVersion.objects.filter(model=model, current_stage=stage.mlflow_stage, is_deleted=False)
            .order_by("-version")
            .values_list("version", flat=True)
            .first()
        )
    else:
        number = None
    if number is None or number == exclude_version:
        return None
    return ModelVersion.objects.filter(model=model, version=number).first()


def pipeline_path(*, version: ModelVersion, target: Stage) -> list[Stage]:
    """The shortest run of catalog moves from where `version` stands to `target`.

    Stages that may be reached from anywhere (like Archived) are only ever the target, never a
    step on the way.
    """
    stages = [s for s in Stage.objects.filter(is_active=True).prefetch_related("allowed_from")]
    start = version_positions(current_stage=version.current_stage, aliases=version.aliases, stages=stages)
    if target.name in start:
        raise InvalidRequest(f"{version.model.name} v{version.version} already holds {target.name}.")
    frontier: list[tuple[list[str], list[Stage]]] = [(start, [])]
    seen = {tuple(start)}
    while frontier:
        positions, path = frontier.pop(0)
        for stage in stages:
            if stage.name in positions or not transition_allowed(stage, positions):
                continue
            unrestricted = not stage.allow_from_none and not stage.allowed_from.all()
            if stage.pk == target.pk:
                return [*path, stage]
            if unrestricted or stage in path:
                continue
            key = (stage.name,)
            if key not in seen:
                seen.add(key)
                frontier.append(([stage.name], [*path, stage]))
    where = ", ".join(start) or "no stage"
    raise InvalidRequest(f"The catalog has no path from {where} to {target.name}.")


def promotion_request_create_through(
    *, version: ModelVersion, stage: Stage, requested_by, justification: str, **kwargs
) -> PromotionRequest:
    """File the first step towards `stage`; each later step is filed when the one before it
    is applied, and waits for its own approvals."""
    path = pipeline_path(version=version, target=stage)
    return promotion_request_create(
        version=version,
        stage=path[0],
        requested_by=requested_by,
        justification=justification,
        then_stages=[s.name for s in path[1:]],
        **kwargs,
    )


# --- evidence ---------------------------------------------------------------------------------


def _sha256(value: Any) -> str:
    return hashlib.sha256(audit.canonical_json(value).encode()).hexdigest()


def build_evidence(
    *, version: ModelVersion, stage: Stage, ci_evidence: dict | None, rollback: bool = False
) -> dict:
    holder = current_holder(stage, version.model, exclude_version=version.version)
    checks = policy.evaluate_checks(
        stage, metrics=version.metrics, tags=version.tags, evidence=ci_evidence or {}
    )
    return {
        "model": version.model.name,
        "version": version.version,
        "run_id": version.run_id,
        "stage": version.current_stage,
        "aliases": list(version.aliases),
        "metrics": dict(version.metrics),
        "params": dict(version.params),
        "tags": dict(version.tags),
        "target": {
            "stage": stage.name,
            "mlflow_stage": stage.mlflow_stage,
            "mlflow_alias": stage.mlflow_alias,
        },
        "current_holder": None
        if holder is None
        else {
            "version": holder.version,
            "metrics": dict(holder.metrics),
            "params": dict(holder.params),
            "tags": dict(holder.tags),
        },
        "checks": [result.as_dict() for result in checks],
        "ci_evidence": dict(ci_evidence or {}),
        "rollback": rollback,
    }


def _evidence_changes(old: dict, new: dict) -> str:
    reasons = []
    for key in ("metrics", "params", "tags"):
        if old.get(key) != new.get(key):
            reasons.append(key)
    if old.get("stage") != new.get("stage") or old.get("aliases") != new.get("aliases"):
        reasons.append("stage or aliases")
    old_holder = (old.get("current_holder") or {}).get("version")
    new_holder = (new.get("current_holder") or {}).get("version")
    if old_holder != new_holder:
        reasons.append(f"holder of the target (v{old_holder or '-'} → v{new_holder or '-'})")
    elif old.get("current_holder") != new.get("current_holder"):
        reasons.append("the current holder's evidence")
    return ", ".join(reasons) or "evidence"


# --- filing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filed:
    request: PromotionRequest
    auto_approved: bool


def promotion_request_create(
    *,
    version: ModelVersion,
    stage: Stage,
    requested_by,
    justification: str,
    ci_evidence: dict | None = None,
    via: str = "web",
    rollback: bool = False,
    then_stages: list[str] | None = None,
) -> PromotionRequest:
    """File a request. Raises a PromotionError subclass, leaving nothing behind but an
    `auth.denied` entry when the refusal is about permission."""
    what = f"request {version.model.name} v{version.version} → {stage.name}"
    if not policy.may_request(requested_by):
        audit.record_denied(
            actor=requested_by,
            what=what,
            reason="not a requester",
            model_name=version.model.name,
            version=version.version,
            to_stage=stage.name,
        )
        raise NotAllowed("You are not allowed to file promotion requests (ask for the Requesters role).")
    justification = (justification or "").strip()
    if not justification:
        raise InvalidRequest("A justification is required: say why this version should move.")
    if len(justification) > MAX_TEXT:
        raise InvalidRequest(
            f"The justification is too long ({len(justification)} characters; at most {MAX_TEXT})."
        )
    if ci_evidence is not None and not isinstance(ci_evidence, dict):
        raise InvalidRequest("Evidence must be a JSON object of names and values.")
    if not stage.is_active:
        raise InvalidRequest(f"Stage {stage.name} is not active; requests to it are closed.")
    if version.is_deleted:
        raise UnknownVersion(
            f"Version {version.version} of model '{version.model.name}' was deleted in MLflow."
        )
    positions = version_positions(current_stage=version.current_stage, aliases=version.aliases)
    if stage.name in positions:
        raise InvalidRequest(f"{version.model.name} v{version.version} already holds {stage.name}.")
    if not rollback and not transition_allowed(stage, positions):
        where = ", ".join(positions) or "no stage"
        raise InvalidRequest(
            f"{stage.name} may be reached from {describe_allowed_from(stage)}; "
            f"{version.model.name} v{version.version} is in {where}."
        )

    evidence = build_evidence(version=version, stage=stage, ci_evidence=ci_evidence, rollback=rollback)
    failing = policy.failing(evidence["checks"])
    automatic = stage.required_approvals == 0
    if automatic and failing:
        raise ChecksFailed(
            f"{stage.name} promotes automatically only when every check passes. Failing: "
            + "; ".join(failing)
        )
    now = timezone.now()
    holder = evidence["current_holder"]
    try:
        with transaction.atomic():
            request = PromotionRequest.objects.create(
                version=version,
                stage=stage,
                requested_by=requested_by,
                requested_by_name=audit.printed_name(requested_by),
                justification=justification,
                status=Status.PENDING,
                source_stage=", ".join(positions) or "None",
                previous_holder=holder["version"] if holder else None,
                evidence=evidence,
                evidence_sha256=_sha256(evidence),
                ci_evidence=dict(ci_evidence or {}),
                then_stages=list(then_stages or []),
                check_results=evidence["checks"],
                via=via,
                created_at=now,
                updated_at=now,
                expires_at=now + stage.request_ttl,
            )
            audit.record(
                action="request.created",
                actor=requested_by,
                meaning=f"Requested: promote {version.model.name} v{version.version} to {stage.name}"
                + (" (rollback)" if rollback else ""),
                model_name=version.model.name,
                version=version.version,
                from_stage=request.source_stage,
                to_stage=stage.name,
                request_id=request.pk,
                details={
                    "justification": justification,
                    "evidence_sha256": request.evidence_sha256,
                    "checks_failing": failing,
                    "via": via,
                    "rollback": rollback,
                    "then_stages": list(then_stages or []),
                },
            )
            notifications.notify("request.created", request.pk)
            if automatic:
                _approve(request, actor=None, reason="every check passed; no approval required")
    except IntegrityError:
        existing = (
            PromotionRequest.objects.filter(
                version=version, stage=stage, status__in=PromotionRequest.OPEN_STATUSES
            )
            .values_list("pk", flat=True)
            .first()
        )
        raise DuplicateRequest(
            f"An open request for {version.model.name} v{version.version} → {stage.name} already exists"
            + (f" (#{existing})." if existing else ".")
        ) from None
    request.refresh_from_db()
    return request


# --- filing in bulk ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    model_name: str
    version: int | None
    reason: str


@dataclass(frozen=True)
class Refused:
    model_name: str
    version: int
    code: str
    message: str


@dataclass
class BulkOutcome:
    stage: Stage
    filed: list[PromotionRequest]
    skipped: list[Skipped]
    refused: list[Refused]


def _why_not(
    version: ModelVersion, *, stage: Stage, stages: list[Stage], ci_evidence: dict | None
) -> tuple[str, bool]:
    """Why `version` cannot be filed to `stage` ("" if it can), and whether to stop looking
    at older versions."""
    if version.status and version.status != "READY":
        return f"v{version.version} is {version.status} in MLflow", False
    positions = version_positions(current_stage=version.current_stage, aliases=version.aliases, stages=stages)
    if stage.name in positions:
        # Anything older would move the stage backwards: that is a rollback, filed by a person.
        return f"v{version.version} already holds {stage.name}", True
    if not transition_allowed(stage, positions):
        where = ", ".join(positions) or "no stage"
        allowed = describe_allowed_from(stage)
        return f"v{version.version} is in {where}; {stage.name} may be reached from {allowed}", False
    results = policy.evaluate_checks(stage, metrics=version.metrics, tags=version.tags, evidence=ci_evidence)
    failing = policy.failing(results)
    if failing:
        return f"v{version.version} fails {'; '.join(failing)}", False
    return "", False


def promotion_requests_create_passing(
    *,
    stage: Stage,
    requested_by,
    justification: str,
    model_names: list[str] | None = None,
    ci_evidence: dict | None = None,
    via: str = "web",
    refresh: bool = True,
) -> BulkOutcome:
    """File one request per model (all, or `model_names`): for its latest version whose checks
    for `stage` pass and that the catalog lets move there.

    The choice is made from the mirror, refreshed by one sync first, so the number of MLflow
    calls does not grow with the number of models looked at; only the requests filed cost
    MLflow calls (when they are applied).
    """
    if not policy.may_request(requested_by):
        audit.record_denied(
            actor=requested_by,
            what=f"file requests in bulk → {stage.name}",
            reason="not a requester",
            to_stage=stage.name,
        )
        raise NotAllowed("You are not allowed to file promotion requests (ask for the Requesters role).")
    if not (justification or "").strip():
        raise InvalidRequest("A justification is required: say why these versions should move.")
    if ci_evidence is not None and not isinstance(ci_evidence, dict):
        raise InvalidRequest("Evidence must be a JSON object of names and values.")
    if not stage.is_active:
        raise InvalidRequest(f"Stage {stage.name} is not active; requests to it are closed.")
    if refresh:
        from registry_sync.services import SyncFailed, sync_registry

        try:
            sync_registry(trigger=SyncRun.Trigger.REQUEST)
        except SyncFailed as exc:
            logger.warning("Choosing from the mirror as it is; MLflow refresh failed: %s", exc)

    stages = list(Stage.objects.prefetch_related("allowed_from"))
    target = next(s for s in stages if s.pk == stage.pk)
    models = RegisteredModel.objects.filter(is_deleted=False)
    outcome = BulkOutcome(stage=stage, filed=[], skipped=[], refused=[])
    if model_names is not None:
        names = list(dict.fromkeys(model_names))
        models = models.filter(name__in=names)
        found = set(models.values_list("name", flat=True))
        outcome.skipped += [
            Skipped(name, None, f"Model '{name}' is not in the MLflow registry.")
            for name in names
            if name not in found
        ]
    versions_by_model: dict[int, list[ModelVersion]] = {}
    for row in (
        ModelVersion.objects.filter(model__in=models, is_deleted=False)
        .select_related("model")
        .only("pk", "version", "status", "current_stage", "aliases", "metrics", "tags", "model__name")
        .order_by("model__name", "-version")
    ):
        versions_by_model.setdefault(row.model_id, []).append(row)
    open_versions = set(
        PromotionRequest.objects.filter(
            stage=stage, status__in=PromotionRequest.OPEN_STATUSES, version__model__in=models
        ).values_list("version_id", flat=True)
    )

    for model_id, model_name in models.order_by("name").values_list("pk", "name"):
        model_versions = versions_by_model.get(model_id)
        if not model_versions:
            outcome.skipped.append(Skipped(model_name, None, "it has no versions"))
            continue
        candidate, first_reason = None, ""
        for row in model_versions:
            reason, stop = _why_not(row, stage=target, stages=stages, ci_evidence=ci_evidence)
            if not reason:
                candidate = row
                break
            first_reason = first_reason or reason
            if stop:
                break
        if candidate is None:
            more = (
                "" if len(model_versions) == 1 or "holds" in first_reason else "; no older version qualifies"
            )
            outcome.skipped.append(Skipped(model_name, model_versions[0].version, first_reason + more))
            continue
        if candidate.pk in open_versions:
            outcome.skipped.append(
                Skipped(
                    model_name, candidate.version, f"v{candidate.version} has an open request to {stage.name}"
                )
            )
            continue
        version = ModelVersion.objects.select_related("model").get(pk=candidate.pk)
        try:
            outcome.filed.append(
                promotion_request_create(
                    version=version,
                    stage=stage,
                    requested_by=requested_by,
                    justification=justification,
                    ci_evidence=ci_evidence,
                    via=via,
                )
            )
        except PromotionError as exc:
            outcome.refused.append(Refused(model_name, candidate.version, exc.code, exc.message))
    return outcome


# --- decisions --------------------------------------------------------------------------------


def _lock(request_id: int) -> PromotionRequest:
    return (
        PromotionRequest.objects.select_for_update()
        .select_related("version__model", "stage")
        .get(pk=request_id)
    )


def _deny(user, request: PromotionRequest, action: str, reason: str, message: str):
    audit.record_denied(
        actor=user,
        what=f"{action} request #{request.pk}",
        reason=reason,
        model_name=request.version.model.name,
        version=request.version.version,
        to_stage=request.stage.name,
        request_id=request.pk,
    )
    return NotAllowed(message)


def _review_permission(request: PromotionRequest, reviewer, action: str) -> None:
    if request.requested_by_id is not None and request.requested_by_id == reviewer.pk:
        raise _deny(reviewer, request, action, "own request", "You cannot review your own request.")
    if not policy.in_approver_groups(reviewer, request.stage):
        groups = ", ".join(g.name for g in request.stage.approver_groups.all()) or "nobody"
        raise _deny(
            reviewer,
            request,
            action,
            "not an approver of the stage",
            f"Only members of {groups} may review requests to {request.stage.name}.",
        )


def _meaning(verb: str, request: PromotionRequest) -> str:
    return f"{verb}: promote {request.version.model.name} v{request.version.version} to {request.stage.name}"


def _context(request: PromotionRequest) -> dict:
    return {
        "model_name": request.version.model.name,
        "version": request.version.version,
        "from_stage": request.source_stage,
        "to_stage": request.stage.name,
        "request_id": request.pk,
    }


def review_approve(
    *,
    request: PromotionRequest,
    reviewer,
    comment: str = "",
    evidence_sha256: str | None = None,
    via: str = "web",
) -> PromotionRequest:
    comment = (comment or "").strip()
    if len(comment) > MAX_TEXT:
        raise InvalidRequest(f"The comment is too long (at most {MAX_TEXT} characters).")
    _review_permission(request, reviewer, "approve")
    with transaction.atomic():
        locked = _lock(request.pk)
        if locked.status != Status.PENDING:
            raise AlreadyDecided(f"Request #{locked.pk} is already {locked.get_status_display().lower()}.")
        if evidence_sha256 and evidence_sha256 != locked.evidence_sha256:
            raise AlreadyDecided("The evidence changed since you loaded the page; review it again.")
        if Review.objects.filter(request=locked, reviewer=reviewer, stale=False).exists():
            raise AlreadyDecided("You have already reviewed this request.")
        failing = policy.failing(locked.check_results)
        if failing:
            raise InvalidRequest(
                "Checks must pass before this request can be approved. Failing: " + "; ".join(failing)
            )
        now = timezone.now()
        try:
            with transaction.atomic():
                Review.objects.create(
                    request=locked,
                    reviewer=reviewer,
                    reviewer_name=audit.printed_name(reviewer),
                    decision=Review.Decision.APPROVE,
                    comment=comment,
                    evidence_sha256=locked.evidence_sha256,
                    created_at=now,
                )
        except IntegrityError:
            raise AlreadyDecided("You have already reviewed this request.") from None
        approvals = Review.objects.filter(
            request=locked, decision=Review.Decision.APPROVE, stale=False
        ).count()
        audit.record(
            action="review.approved",
            actor=reviewer,
            meaning=_meaning("Approved", locked),
            details={
                "comment": comment,
                "evidence_sha256": locked.evidence_sha256,
                "approvals": approvals,
                "required": locked.stage.required_approvals,
                "via": via,
            },
            **_context(locked),
        )
        if approvals >= locked.stage.required_approvals:
            _approve(
                locked, actor=reviewer, reason=f"{approvals} of {locked.stage.required_approvals} approvals"
            )
        else:
            PromotionRequest.objects.filter(pk=locked.pk).update(updated_at=now)
    locked.refresh_from_db()
    return locked


def _set_status(request_id: int, old: str | tuple[str, ...], new: str, *, now=None, **fields) -> bool:
    """Compare-and-set: move the request from `old` (one status or several) to `new`, with
    `fields`; False when another actor moved it first."""
    old = (old,) if isinstance(old, str) else old
    return bool(
        PromotionRequest.objects.filter(pk=request_id, status__in=old).update(
            status=new, updated_at=now or timezone.now(), **fields
        )
    )


def _approve(request: PromotionRequest, *, actor, reason: str) -> None:
    """pending → approved, then enqueue the apply once the transaction commits."""
    now = timezone.now()
    if not _set_status(request.pk, Status.PENDING, Status.APPROVED, now=now, decided_at=now):
        raise AlreadyDecided(f"Request #{request.pk} was decided by someone else first.")
    audit.record(
        action="request.approved",
        actor=actor,
        meaning=_meaning("Approved for promotion", request),
        details={"reason": reason},
        **_context(request),
    )
    notifications.notify("request.approved", request.pk)
    transaction.on_commit(lambda: enqueue_apply(request.pk))


def review_reject(*, request: PromotionRequest, reviewer, comment: str, via: str = "web") -> PromotionRequest:
    comment = (comment or "").strip()
    if not comment:
        raise InvalidRequest("A rejection needs a comment: say what must change.")
    if len(comment) > MAX_TEXT:
        raise InvalidRequest(f"The comment is too long (at most {MAX_TEXT} characters).")
    _review_permission(request, reviewer, "reject")
    with transaction.atomic():
        locked = _lock(request.pk)
        if locked.status != Status.PENDING:
            raise AlreadyDecided(f"Request #{locked.pk} is already {locked.get_status_display().lower()}.")
        if Review.objects.filter(request=locked, reviewer=reviewer, stale=False).exists():
            raise AlreadyDecided("You have already reviewed this request.")
        now = timezone.now()
        Review.objects.create(
            request=locked,
            reviewer=reviewer,
            reviewer_name=audit.printed_name(reviewer),
            decision=Review.Decision.REJECT,
            comment=comment,
            evidence_sha256=locked.evidence_sha256,
            created_at=now,
        )
        if not _set_status(locked.pk, Status.PENDING, Status.REJECTED, now=now, decided_at=now):
            raise AlreadyDecided(f"Request #{locked.pk} was decided by someone else first.")
        audit.record(
            action="review.rejected",
            actor=reviewer,
            meaning=_meaning("Rejected", locked),
            details={"comment": comment, "evidence_sha256": locked.evidence_sha256, "via": via},
            **_context(locked),
        )
        notifications.notify("request.rejected", locked.pk)
    locked.refresh_from_db()
    return locked


def request_cancel(*, request: PromotionRequest, user, via: str = "web") -> PromotionRequest:
    if not policy.may_cancel(user, request):
        raise _deny(
            user,
            request,
            "cancel",
            "not the requester or a stage admin",
            "Only the requester or a stage admin may cancel a request.",
        )
    with transaction.atomic():
        now = timezone.now()
        if not _set_status(
            request.pk, (Status.PENDING, Status.APPROVED), Status.CANCELLED, now=now, decided_at=now
        ):
            current = PromotionRequest.objects.get(pk=request.pk)
            raise AlreadyDecided(f"Request #{request.pk} is already {current.get_status_display().lower()}.")
        audit.record(
            action="request.cancelled",
            actor=user,
            meaning=_meaning("Cancelled", request),
            details={"via": via},
            **_context(request),
        )
        notifications.notify("request.cancelled", request.pk)
    request.refresh_from_db()
    return request


def request_retry(*, request: PromotionRequest, user) -> PromotionRequest:
    if not policy.is_stage_admin(user):
        raise _deny(
            user, request, "retry", "not a stage admin", "Only stage admins may retry a failed request."
        )
    with transaction.atomic():
        now = timezone.now()
        try:
            with transaction.atomic():
                changed = _set_status(
                    request.pk, Status.FAILED, Status.APPROVED, now=now, attempts=0, enqueued_at=None
                )
        except IntegrityError:
            raise DuplicateRequest(
                "Another open request for this version and stage exists; retry is not possible."
            ) from None
        if not changed:
            current = PromotionRequest.objects.get(pk=request.pk)
            raise AlreadyDecided(
                f"Request #{request.pk} is {current.get_status_display().lower()}, not failed."
            )
        audit.record(
            action="request.retried",
            actor=user,
            meaning=_meaning("Retry", request),
            details={"previous_error": request.last_error},
            **_context(request),
        )
        transaction.on_commit(lambda: enqueue_apply(request.pk))
    request.refresh_from_db()
    return request


def requests_expire(*, now=None) -> int:
    now = now or timezone.now()
    expired = 0
    candidates = PromotionRequest.objects.filter(status=Status.PENDING, expires_at__lte=now).select_related(
        "version__model", "stage"
    )
    for request in candidates:
        with transaction.atomic():
            changed = _set_status(request.pk, Status.PENDING, Status.EXPIRED, now=now, decided_at=now)
            if changed:
                audit.record(
                    action="request.expired",
                    meaning=_meaning("Expired", request),
                    details={"expires_at": audit.utc_iso(request.expires_at)},
                    **_context(request),
                )
                notifications.notify("request.expired", request.pk)
                expired += 1
    return expired


def requests_refresh_evidence(*, version_ids: set[int]) -> int:
    """After a sync: re-snapshot pending requests whose evidence moved; approvals go stale."""
    if not version_ids:
        return 0
    model_ids = ModelVersion.objects.filter(pk__in=version_ids).values("model_id")
    pending = PromotionRequest.objects.filter(
        status=Status.PENDING, version__model_id__in=model_ids
    ).select_related("version__model", "stage")
    refreshed = 0
    for request in pending:
        evidence = build_evidence(
            version=request.version,
            stage=request.stage,
            ci_evidence=request.ci_evidence,
            rollback=bool(request.evidence.get("rollback")),
        )
        digest = _sha256(evidence)
        if digest == request.evidence_sha256:
            continue
        reason = f"Evidence changed: {_evidence_changes(request.evidence, evidence)}"
        with transaction.atomic():
            changed = PromotionRequest.objects.filter(
                pk=request.pk, status=Status.PENDING, evidence_sha256=request.evidence_sha256
            ).update(
                evidence=evidence,
                evidence_sha256=digest,
                check_results=evidence["checks"],
                previous_holder=(evidence["current_holder"] or {}).get("version"),
                updated_at=timezone.now(),
            )
            if not changed:
                continue
            stale = Review.objects.filter(request=request, stale=False).update(
                stale=True, stale_reason=reason[:500]
            )
            audit.record(
                action="request.evidence_changed",
                meaning=f"{reason} for request #{request.pk}; {stale} approval(s) must be given again",
                details={"old_sha256": request.evidence_sha256, "new_sha256": digest, "stale_reviews": stale},
                **_context(request),
            )
        refreshed += 1
    return refreshed


# --- applying ---------------------------------------------------------------------------------


def enqueue_apply(request_id: int) -> bool:
    """Publish the apply task. A broker failure is logged; the sweeper publishes it later."""
    from promotions.tasks import apply_promotion

    try:
        apply_promotion.apply_async(args=[request_id], retry=False)
    except Exception as exc:  # noqa: BLE001 - the approval stands; the outbox sweeper retries
        logger.warning("Could not enqueue request #%s (%s); the sweeper will.", request_id, exc)
        return False
    PromotionRequest.objects.filter(pk=request_id).update(enqueued_at=timezone.now())
    return True


def requests_sweep(*, now=None) -> list[int]:
    """Re-enqueue approved requests nobody picked up, and applying ones with no live attempt."""
    now = now or timezone.now()
    stuck_before = now - timedelta(seconds=settings.PROMOTION_STUCK_AFTER_SECONDS)
    from django.db.models import Q

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


def retry_delay(attempts: int) -> float:
    """Exponential backoff with full jitter, capped below the broker's visibility timeout."""
    ceiling = min(settings.PROMOTION_RETRY_CAP_SECONDS, settings.PROMOTION_RETRY_BASE_SECONDS * 2**attempts)
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security


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
    now = timezone.now()
    with transaction.atomic():
        changed = _set_status(request.pk, Status.APPLYING, Status.FAILED, now=now, last_error=reason[:2000])
        if changed:
            audit.record(
                action="promotion.failed",
                meaning=_meaning("Failed", request) + f": {reason}",
                details={"reason": reason, "attempts": request.attempts, "permanent": permanent},
                **_context(request),
            )
            notifications.notify("promotion.failed", request.pk)


def _approvers(request: PromotionRequest) -> list[str]:
    return list(
        Review.objects.filter(request=request, decision=Review.Decision.APPROVE, stale=False).values_list(
            "reviewer_name", flat=True
        )
    )


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
    try:
        approvers = _approvers(request)
        outcome = _apply_to_registry(request, approvers)
    except gateway.RegistryUnavailable as exc:
        reason = str(exc)
        if request.attempts >= settings.PROMOTION_MAX_ATTEMPTS:
            _fail(request, f"MLflow unreachable after {request.attempts} attempts: {reason}")
            return "failed"
        _set_status(request.pk, Status.APPLYING, Status.APPROVED, last_error=reason[:2000])
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
        changed = _set_status(
            request.pk, Status.APPLYING, Status.APPLIED, now=now, applied_at=now, last_error=""
        )
        if not changed:
            return "lost the claim"
        _update_mirror(request, outcome)
        audit.record(
            action="promotion.applied",
            meaning=_meaning("Applied", request),
            details={
                "previous_holders": outcome.previous_holders,
                "archived": outcome.archived,
                "already_in_place": outcome.already_in_place,
                "approved_by": approvers,
                "attempts": request.attempts,
                "binding": stage.binding_label,
            },
            **_context(request),
        )
        notifications.notify("promotion.applied", request.pk)
    if request.then_stages:
        _continue_pipeline(request)
    return "applied"


def _continue_pipeline(request: PromotionRequest) -> None:
    """File the next step of a promote-through request, as its requester."""
    next_name, *rest = request.then_stages
    try:
        version = ModelVersion.objects.select_related("model").get(pk=request.version_id)
        promotion_request_create(
            version=version,
            stage=stage_get_by_name(next_name),
            requested_by=request.requested_by,
            justification=request.justification,
            ci_evidence=request.ci_evidence,
            via=request.via,
            then_stages=rest,
        )
    except PromotionError as exc:
        audit.record(
            action="pipeline.stopped",
            meaning=f"Pipeline stopped before {next_name}: {exc.message}",
            details={"reason": exc.message, "remaining": request.then_stages},
            **_context(request),
        )


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
    if holds_target(stage, current_stage=live.current_stage, aliases=live.aliases):
        # A crash after the MLflow write and before our commit: finish without a second move,
        # writing the provenance tags if the crash came before them.
        if live.tags.get("promotion.request_id") != tags["promotion.request_id"]:
            gateway.set_version_tags(model_name, number, tags)
        return _Outcome(previous_holders=[], archived=[], already_in_place=True, live=live)
    positions = version_positions(current_stage=live.current_stage, aliases=live.aliases, stages=stages)
    rollback = bool(request.evidence.get("rollback"))
    if not rollback and not transition_allowed(stage, positions):
        raise _PreconditionFailed(
            f"{model_name} v{number} is now in {', '.join(positions) or 'no stage'} in MLflow; "
            f"{stage.name} may be reached from {describe_allowed_from(stage)}."
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
