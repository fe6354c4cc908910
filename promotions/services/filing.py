"""Filing promotion requests: one at a time, through the pipeline, or in bulk.

The page, the API and the CLI all file through `promotion_request_file`, which looks the
version and the stage up and refuses (and audits) a user who may not request.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from promotions import audit, catalog, notifications, policy
from promotions.errors import (
    AlreadyHolds,
    ChecksFailed,
    DuplicateRequest,
    InvalidRequest,
    NotAllowed,
    PromotionError,
    RegistryUnavailable,
    UnknownVersion,
)
from promotions.models import MAX_TEXT, ManifestState, PromotionRequest, Stage
from promotions.services.evidence import build_evidence, evidence_digest
from promotions.services.lifecycle import audit_context, request_approve_for_apply
from promotions.services.manifest import AUTOMATIC_REASON, enqueue_manifest, manifest_required
from promotions.text import clean_text
from registry_sync import gateway
from registry_sync.models import ModelVersion, RegisteredModel, SyncRun
from registry_sync.services import SyncFailed, sync_registry

logger = logging.getLogger(__name__)
Status = PromotionRequest.Status
VIA_WORDS = {"api": " through the API", "cli": " from the command line"}
NOT_A_REQUESTER = "You are not allowed to file promotion requests (ask for the Requesters role)."


def requester_required(user, *, what: str, **context) -> None:
    """Refuse, and audit, a user who may not file requests: the one check every entry uses."""
    if not policy.may_request(user):
        audit.record_denied(actor=user, what=what, reason="not a requester", **context)
        raise NotAllowed(NOT_A_REQUESTER)


def registry_refresh(*, model_name: str | None = None) -> None:
    """Sync the mirror (one model, or all) before filing. A request is filed on what MLflow says
    now, never on the mirror's older copy: when MLflow cannot be asked, nothing is filed."""
    try:
        sync_registry(trigger=SyncRun.Trigger.REQUEST, model_name=model_name)
    except SyncFailed as exc:
        logger.warning("Not filing; MLflow refresh failed: %s", exc)
        if isinstance(exc.cause, gateway.RegistryRejected):
            raise InvalidRequest(f"MLflow refused to look the model up: {exc.cause}") from None
        if isinstance(exc.cause, gateway.RegistryPermissionDenied):
            reason = "refuses this service's credentials"
        else:
            reason = "is not answering"
        raise RegistryUnavailable(
            f"MLflow at {gateway.tracking_host()} {reason}, so the version cannot be checked; "
            "nothing was filed. Try again later."
        ) from None


def version_get(*, model_name: str, version: int, refresh: bool = True) -> ModelVersion:
    """The mirrored version; refreshed from MLflow first so a just-registered version is found
    (RegistryUnavailable when MLflow cannot be asked)."""
    if refresh:
        registry_refresh(model_name=model_name)
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


def promotion_request_file(
    *,
    model_name: str,
    version: int,
    stage_name: str,
    requested_by,
    justification: str,
    ci_evidence: dict | None = None,
    via: str = "web",
    through: bool = False,
    rollback: bool = False,
) -> PromotionRequest:
    """Look up the version (refreshed from MLflow: RegistryUnavailable when it cannot be asked)
    and the stage, then file: to the stage itself, or with `through` its first step in catalog
    order."""
    requester_required(
        requested_by,
        what=f"request {model_name} v{version} → {stage_name}{VIA_WORDS.get(via, '')}",
        model_name=model_name,
        version=version,
        to_stage=stage_name,
    )
    stage = catalog.stage_get_by_name(stage_name)
    found = version_get(model_name=model_name, version=version)
    if through:
        return promotion_request_create_through(
            version=found,
            stage=stage,
            requested_by=requested_by,
            justification=justification,
            ci_evidence=ci_evidence,
            via=via,
        )
    return promotion_request_create(
        version=found,
        stage=stage,
        requested_by=requested_by,
        justification=justification,
        ci_evidence=ci_evidence,
        via=via,
        rollback=rollback,
    )


def promotion_request_create_through(
    *, version: ModelVersion, stage: Stage, requested_by, justification: str, **kwargs
) -> PromotionRequest:
    """File the first step towards `stage`; each later step is filed when the one before it
    is applied, and waits for its own approvals."""
    path = catalog.pipeline_path(version=version, target=stage)
    return promotion_request_create(
        version=version,
        stage=path[0],
        requested_by=requested_by,
        justification=justification,
        then_stages=[s.name for s in path[1:]],
        **kwargs,
    )


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
    bulk_id: uuid.UUID | None = None,
) -> PromotionRequest:
    """File a request. Raises a PromotionError subclass, leaving nothing behind but an
    `auth.denied` entry when the refusal is about permission."""
    requester_required(
        requested_by,
        what=f"request {version.model.name} v{version.version} → {stage.name}",
        model_name=version.model.name,
        version=version.version,
        to_stage=stage.name,
    )
    justification = clean_text(
        justification,
        what="justification",
        max_length=MAX_TEXT,
        required="A justification is required: say why this version should move.",
    )
    if ci_evidence is not None and not isinstance(ci_evidence, dict):
        raise InvalidRequest("Evidence must be a JSON object of names and values.")
    if not stage.is_active:
        raise InvalidRequest(f"Stage {stage.name} is not active; requests to it are closed.")
    if version.is_deleted:
        raise UnknownVersion(
            f"Version {version.version} of model '{version.model.name}' was deleted in MLflow."
        )
    if rollback and not catalog.held_before(version=version, stage=stage):
        audit.record_denied(
            actor=requested_by,
            what=f"roll back {version.model.name} v{version.version} → {stage.name}",
            reason="the version never held the stage",
            model_name=version.model.name,
            version=version.version,
            to_stage=stage.name,
        )
        raise NotAllowed(
            f"{version.model.name} v{version.version} never held {stage.name}: only a version that "
            "held a stage can be rolled back to it. File a normal request instead."
        )
    positions = catalog.version_positions(current_stage=version.current_stage, aliases=version.aliases)
    if stage.name in positions:
        applied = (
            PromotionRequest.objects.filter(version=version, stage=stage, status=Status.APPLIED)
            .order_by("-applied_at", "-id")
            .values_list("pk", flat=True)
            .first()
        )
        raise AlreadyHolds(
            f"{version.model.name} v{version.version} already holds {stage.name}"
            + (f" (applied by request #{applied})." if applied else "."),
            request_id=applied,
        )
    if not rollback and not catalog.transition_allowed(stage, positions):
        where = ", ".join(positions) or "no stage"
        raise InvalidRequest(
            f"{stage.name} may be reached from {catalog.describe_allowed_from(stage)}; "
            f"{version.model.name} v{version.version} is in {where}."
        )

    evidence = build_evidence(version=version, stage=stage, ci_evidence=ci_evidence, rollback=rollback)
    failing = policy.failing(evidence["checks"])
    tier = policy.model_tier(version.model)
    tier_rule = policy.tier_rule_snapshot(policy.tier_rule_for(stage, tier))
    # A tier's rule that asks for an approval (or a group's) makes an automatic stage wait for it.
    automatic = stage.required_approvals == 0 and not (
        tier_rule and (tier_rule["approvals"] or tier_rule["group_id"])
    )
    if automatic and failing:
        raise ChecksFailed(
            f"{stage.name} promotes automatically only when every check passes. Failing: "
            + "; ".join(failing)
        )
    now = timezone.now()
    holder = evidence["current_holder"]
    # The worker records the model's files first; until then nothing can approve the request.
    computing = manifest_required()
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
                evidence_sha256=evidence_digest(evidence),
                ci_evidence=dict(ci_evidence or {}),
                then_stages=list(then_stages or []),
                required_approvals_at_filing=stage.required_approvals,
                risk_tier_at_filing=tier,
                risk_rule_at_filing=tier_rule,
                check_results=evidence["checks"],
                checks_blocked=bool(failing),
                via=via,
                created_at=now,
                updated_at=now,
                expires_at=now + stage.request_ttl,
                manifest_state=ManifestState.COMPUTING if computing else ManifestState.NONE,
                bulk_id=bulk_id,
            )
            request.approver_groups_at_filing.set(stage.approver_groups.all())
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
                    "risk_tier": tier,
                    "risk_rule": tier_rule,
                },
            )
            notifications.notify("request.created", request.pk)
            if computing:
                # An automatic stage is approved by the manifest task, once the files are known.
                transaction.on_commit(lambda: enqueue_manifest(request.pk))
            elif automatic:
                request_approve_for_apply(request, actor=None, reason=AUTOMATIC_REASON)
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
            + (f" (#{existing})." if existing else "."),
            request_id=existing,
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
    positions = catalog.version_positions(
        current_stage=version.current_stage, aliases=version.aliases, stages=stages
    )
    if stage.name in positions:
        # Anything older would move the stage backwards: that is a rollback, filed by a person.
        return f"v{version.version} already holds {stage.name}", True
    if not catalog.transition_allowed(stage, positions):
        where = ", ".join(positions) or "no stage"
        allowed = catalog.describe_allowed_from(stage)
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
) -> BulkOutcome:
    """File one request per model (all, or `model_names`): for its latest version whose checks
    for `stage` pass and that the catalog lets move there.

    The choice is made from the mirror, refreshed by one sync first, so the number of MLflow
    calls does not grow with the number of models looked at; only the requests filed cost
    MLflow calls (when they are applied).

    The requests share one `bulk_id`, and their e-mails are published once all are filed: each
    recipient gets one message for the bulk, not one per request.
    """
    requester_required(requested_by, what=f"file requests in bulk → {stage.name}", to_stage=stage.name)
    if not (justification or "").strip():
        raise InvalidRequest("A justification is required: say why these versions should move.")
    if ci_evidence is not None and not isinstance(ci_evidence, dict):
        raise InvalidRequest("Evidence must be a JSON object of names and values.")
    if not stage.is_active:
        raise InvalidRequest(f"Stage {stage.name} is not active; requests to it are closed.")
    registry_refresh()

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

    bulk_id = uuid.uuid4()
    with notifications.emails_held():
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
                    ""
                    if len(model_versions) == 1 or "holds" in first_reason
                    else "; no older version qualifies"
                )
                outcome.skipped.append(Skipped(model_name, model_versions[0].version, first_reason + more))
                continue
            if candidate.pk in open_versions:
                outcome.skipped.append(
                    Skipped(
                        model_name,
                        candidate.version,
                        f"v{candidate.version} has an open request to {stage.name}",
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
                        bulk_id=bulk_id,
                    )
                )
            except PromotionError as exc:
                outcome.refused.append(Refused(model_name, candidate.version, exc.code, exc.message))
    return outcome


def pipeline_continue(*, request_id: int) -> PromotionRequest | None:
    """After an apply: file the next step of a promote-through request, as its requester.

    Returns the step filed, or None when there is none or the catalog refuses it (recorded as
    `pipeline.stopped`, with the reason).
    """
    request = PromotionRequest.objects.select_related("version__model", "stage", "requested_by").get(
        pk=request_id
    )
    if request.status != Status.APPLIED or not request.then_stages:
        return None
    next_name, *rest = request.then_stages
    try:
        return promotion_request_create(
            version=request.version,
            stage=catalog.stage_get_by_name(next_name),
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
            **audit_context(request),
        )
        return None
