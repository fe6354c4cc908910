"""Applying approved requests to MLflow: claim, check the preconditions, write, record.

An approved request is the outbox: its task is published on commit, and `requests_sweep`
publishes again what no worker picked up. `promotion_apply` is idempotent: a second run finds
the binding in place and writes nothing twice.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from common import telemetry
from common.redact import redact
from promotions import audit, catalog, change_windows, notifications, outbox, policy, provenance
from promotions.errors import TransientApplyError
from promotions.models import ManifestState, PromotionRequest, RiskTierRule, Stage
from promotions.services.lifecycle import (
    LEASE_ENDED,
    ROW_LOCK,
    audit_context,
    enqueue_apply,
    meaning,
    request_reopen,
    request_schedule,
    status_set,
)
from promotions.services.manifest import manifest_changes
from registry_sync import gateway
from registry_sync.models import RegisteredModel
from registry_sync.services import mirror_binding_set, mirror_model_tags_set

logger = logging.getLogger(__name__)
Status = PromotionRequest.Status


def abandoned_applies(now: datetime) -> Q:
    """Applying requests whose attempt stopped renewing its lease: the only ones to take over.

    A request claimed before leases existed has none; it counts as abandoned once quiet for
    PROMOTION_STUCK_AFTER_SECONDS, as it did then.
    """
    stuck_before = now - timedelta(seconds=settings.PROMOTION_STUCK_AFTER_SECONDS)
    return Q(status=Status.APPLYING, lease_expires_at__lt=now) | Q(
        status=Status.APPLYING, lease_expires_at__isnull=True, updated_at__lt=stuck_before
    )


def requests_sweep(*, now=None) -> list[int]:
    """Re-enqueue approved requests nobody picked up, and applying ones whose lease expired."""
    now = now or timezone.now()
    stuck_before = now - timedelta(seconds=settings.PROMOTION_STUCK_AFTER_SECONDS)
    ids = list(
        PromotionRequest.objects.filter(
            Q(status=Status.APPROVED, enqueued_at__isnull=True)
            | Q(status=Status.APPROVED, enqueued_at__lt=stuck_before)
            | abandoned_applies(now)
        ).values_list("pk", flat=True)[:500]
    )
    for request_id in ids:
        enqueue_apply(request_id)
    telemetry.SWEEPER_REQUEUED.inc(len(ids))
    return ids


def apply_retry_scheduled(*, request_id: int, delay: float) -> None:
    """Hold the sweeper off until the task's own retry, `delay` seconds away, has had its chance.

    `enqueued_at` is also the time the page announces for the next try, so this moves
    `updated_at`: the open pages' poll sends the panel that says so.
    """
    now = timezone.now()
    PromotionRequest.objects.filter(pk=request_id, status=Status.APPROVED).update(
        enqueued_at=now + timedelta(seconds=delay), updated_at=now
    )


def retry_delay(attempts: int) -> float:
    """The wait before retry `attempts`, capped below the broker's visibility timeout."""
    return outbox.backoff_delay(
        attempts, base=settings.PROMOTION_RETRY_BASE_SECONDS, cap=settings.PROMOTION_RETRY_CAP_SECONDS
    )


class _LeaseLost(Exception):
    """Another attempt took the request over: this one must write nothing more."""


def _lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.PROMOTION_LEASE_SECONDS)


class _Lease:
    """One attempt's hold on an applying request, renewed while the attempt works.

    `fence()` is the check right before each MLflow write: one conditional UPDATE that renews
    the lease only if this attempt still holds it. While the attempt runs, a heartbeat thread
    renews it every third of PROMOTION_LEASE_SECONDS, because a single MLflow call can outlast
    the lease and a write already sent can no longer be fenced.
    """

    def __init__(self, request_id: int, token: str):
        self.request_id, self.token = request_id, token
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def renew(self, **fields) -> bool:
        return bool(
            PromotionRequest.objects.filter(
                pk=self.request_id, status=Status.APPLYING, lease_token=self.token
            ).update(lease_expires_at=_lease_until(timezone.now()), **fields)
        )

    def fence(self, **fields) -> None:
        if not self.renew(**fields):
            raise _LeaseLost

    def release(self, new_status: str, *, now=None, **fields) -> bool:
        """Leave `applying` for `new_status`, ending the lease; False when this attempt no
        longer holds the request (taken over), so it changes nothing."""
        return status_set(
            self.request_id, Status.APPLYING, new_status, now=now, held_by=self.token, **LEASE_ENDED, **fields
        )

    def __enter__(self) -> _Lease:
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.request_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _heartbeat(self) -> None:
        try:
            while not self._stop.wait(settings.PROMOTION_LEASE_SECONDS / 3):
                try:
                    if not self.renew():
                        return  # taken over or finished: nothing left to hold
                except DatabaseError as exc:
                    # A missed renewal is not fatal: the next one may land before expiry.
                    logger.warning("Request #%s: lease renewal failed: %s", self.request_id, exc)
        finally:
            connections.close_all()  # this thread's own connections only


def _claim(request_id: int) -> tuple[PromotionRequest, _Lease] | None:
    """approved → applying with a fresh lease, or take over an applying request whose lease
    expired; None when not ours to do."""
    now = timezone.now()
    token = uuid.uuid4().hex
    lease = {"lease_token": token, "lease_expires_at": _lease_until(now)}
    claimed = PromotionRequest.objects.filter(pk=request_id, status=Status.APPROVED).update(
        status=Status.APPLYING, attempts=F("attempts") + 1, updated_at=now, **lease
    )
    if not claimed:
        claimed = PromotionRequest.objects.filter(abandoned_applies(now), pk=request_id).update(
            attempts=F("attempts") + 1, updated_at=now, **lease
        )
        if claimed:
            telemetry.APPLY_TAKEOVERS.inc()
    if not claimed:
        return None
    telemetry.APPLY_ATTEMPTS.inc()
    request = PromotionRequest.objects.select_related("version__model", "stage").get(pk=request_id)
    return request, _Lease(request_id, token)


def _fail(
    request: PromotionRequest,
    lease: _Lease,
    reason: str,
    *,
    cause: str,
    detail: str = "",
    permanent: bool = True,
) -> None:
    """`cause`: one of telemetry.FAILURE_CAUSES, the metric's label (the reason is free text)."""
    # The reason lands in the immutable audit log: nothing that could be a credential may reach it.
    # The detail (the library's own text) is for the page's Details only, redacted as well.
    reason, detail = redact(reason), redact(detail)
    now = timezone.now()
    with transaction.atomic():
        if lease.release(Status.FAILED, now=now, last_error=reason[:2000], last_error_detail=detail[:4000]):
            audit.record(
                action="promotion.failed",
                meaning=meaning("Failed", request) + f": {reason}",
                details={"reason": reason, "attempts": request.attempts, "permanent": permanent},
                **audit_context(request),
            )
            notifications.notify("promotion.failed", request.pk)
            transaction.on_commit(lambda: telemetry.APPLY_FAILURES.labels(reason=cause).inc())


@dataclass(frozen=True)
class _Approvers:
    """The approvals that count now: printed names for the audit log, usernames for MLflow's
    tags (a printed name changes with the user's first and last name; a username does not)."""

    names: list[str]
    usernames: list[str]


def _approvers(request: PromotionRequest) -> tuple[_Approvers, str]:
    """The approvals that count now, and why they do not suffice ("" when they do): an approver
    left (deactivated, or out of the approver groups), or the policy asks for more."""
    approvals = policy.counting_approvals(request)
    approvers = _Approvers(
        names=[review.reviewer_name for review in approvals],
        # counting_approvals keeps active reviewers only, so each review still has its user
        usernames=[review.reviewer.username for review in approvals],
    )
    return approvers, policy.approval_shortfall(request, approvals)


def _risk_tier_refresh(request: PromotionRequest) -> None:
    """On a stage with risk tier rules, read the model's tags from MLflow before the policy is
    checked: a tier raised since the last sync holds the request to the stricter rule now.
    One call, only there; when MLflow does not answer, the mirror's tags stand (and the apply's
    own calls meet the outage)."""
    if not RiskTierRule.objects.filter(stage_id=request.stage_id).exists():
        return
    model = request.version.model
    try:
        info = gateway.get_registered_model(model.name)
    except gateway.RegistryError as exc:
        logger.info(
            "Request #%s: the model's tags could not be read, the mirror's stand: %s",
            request.pk,
            redact(str(exc)),
        )
        return
    mirror_model_tags_set(model, tags=info.tags)


def _emergency_approver(request: PromotionRequest) -> _Approvers:
    """Who stands for an emergency change in the log and in MLflow's tags: the stage admin who
    applied it at once."""
    user = request.emergency_by
    return _Approvers(
        names=[f"{request.emergency_by_name} (emergency change)"],
        usernames=[user.username] if user is not None else [],
    )


def promotion_apply(*, request_id: int) -> str:
    """Apply one approved request to MLflow. Idempotent; returns what happened.

    Raises TransientApplyError when MLflow is unreachable and attempts remain.
    """
    claim = _claim(request_id)
    if claim is None:
        current = PromotionRequest.objects.filter(pk=request_id).values_list("status", flat=True).first()
        return f"skipped ({current or 'missing'})"
    request, lease = claim
    with lease:
        try:
            return _apply_claimed(request, lease)
        except _LeaseLost:
            logger.warning("Request #%s: taken over by another attempt; this one wrote no more", request_id)
            return "lost the lease"


def _apply_claimed(request: PromotionRequest, lease: _Lease) -> str:
    # A freeze added after the approval (or the release) stops the apply here, before any MLflow
    # call: back to scheduled, and the attempt it claimed is not counted. An emergency change is
    # the one request a freeze lets through.
    frozen = (
        None
        if request.is_emergency
        else change_windows.apply_hold(request.stage, timezone.now(), windows=False)
    )
    if frozen is not None:
        with transaction.atomic():
            held = request_schedule(
                request,
                old=Status.APPLYING,
                hold=frozen,
                held_by=lease.token,
                attempts=F("attempts") - 1,
            )
        if not held:
            raise _LeaseLost
        return "scheduled"
    if request.attempts > settings.PROMOTION_MAX_ATTEMPTS:
        _fail(
            request,
            lease,
            f"gave up after {settings.PROMOTION_MAX_ATTEMPTS} attempts",
            cause="attempts_exhausted",
        )
        return "failed"
    stage, model_name, number = request.stage, request.version.model.name, request.version.version
    _risk_tier_refresh(request)
    approvers, too_few = _approvers(request)
    if request.is_emergency:
        # Break-glass skipped the approvals, nothing else: the checks below still run.
        approvers, too_few = _emergency_approver(request), ""
    if too_few:
        with transaction.atomic():
            reopened = request_reopen(request, old=Status.APPLYING, held_by=lease.token, reason=too_few)
        if not reopened:
            raise _LeaseLost
        return "reopened"
    try:
        outcome = _apply_to_registry(request, approvers, lease)
    except gateway.RegistryUnavailable as exc:
        reason, detail = redact(str(exc)), redact(exc.detail)
        if request.attempts >= settings.PROMOTION_MAX_ATTEMPTS:
            _fail(
                request,
                lease,
                f"MLflow unreachable after {request.attempts} attempts: {reason}",
                cause="registry_unavailable",
                detail=detail,
            )
            return "failed"
        if not lease.release(Status.APPROVED, last_error=reason[:2000], last_error_detail=detail[:4000]):
            raise _LeaseLost from None
        telemetry.APPLY_RETRIES.inc()
        raise TransientApplyError(reason, request.attempts) from None
    except gateway.RegistryPermissionDenied as exc:
        _fail(request, lease, str(exc), cause="permission_denied", detail=exc.detail)
        return "failed"
    except (gateway.VersionNotFound, gateway.ModelNotFound) as exc:
        _fail(
            request,
            lease,
            f"Version {number} of model '{model_name}' no longer exists in MLflow.",
            cause="version_missing",
            detail=exc.detail,
        )
        return "failed"
    except gateway.RegistryRejected as exc:
        _fail(
            request, lease, f"MLflow refused the change: {exc}", cause="registry_rejected", detail=exc.detail
        )
        return "failed"
    except _PreconditionFailed as exc:
        _fail(request, lease, str(exc), cause="precondition")
        return "failed"

    now = timezone.now()
    with transaction.atomic():
        if not lease.release(Status.APPLIED, now=now, applied_at=now, last_error="", last_error_detail=""):
            raise _LeaseLost
        _update_mirror(request, outcome)
        audit.record(
            action="promotion.applied",
            meaning=meaning("Applied", request),
            details={
                "previous_holders": outcome.previous_holders,
                "archived": outcome.archived,
                "already_in_place": outcome.already_in_place,
                "written": outcome.written,
                "approved_by": approvers.names,
                "attempts": request.attempts,
                "binding": stage.binding_label,
                **({"emergency": True} if request.is_emergency else {}),
            },
            **audit_context(request),
        )
        notifications.notify("promotion.applied", request.pk)
        if request.decided_at is not None:
            waited = (now - request.decided_at).total_seconds()
            transaction.on_commit(
                lambda: telemetry.APPROVAL_TO_APPLIED.labels(stage=stage.name).observe(max(waited, 0.0))
            )
    return "applied"


class _PreconditionFailed(Exception):
    pass


@dataclass
class _Outcome:
    previous_holders: list[int]
    archived: list[int]
    already_in_place: bool
    live: gateway.ModelVersionInfo | None = None
    # The halves of the binding this attempt wrote ("stage", "alias"); a retry after a crash
    # between the two writes names only the one that was missing.
    written: list[str] = field(default_factory=list)


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


def _apply_to_registry(request: PromotionRequest, approvers: _Approvers, lease: _Lease) -> _Outcome:
    """Check the preconditions against MLflow, then bind the stage and tag the versions.

    MLflow calls: the reads of `_read_candidate` (one, or two when the catalog has alias
    stages), the run when a check needs its metrics, the previous alias holder for an alias
    target, the model files' check when the request recorded them (a listing and a download per
    file, see `_check_model_files`), then the transition and/or alias move, one write on the
    version the move displaced when its tags say it holds the stage (`_mark_displaced`), and the
    four provenance tags (five with the files' digest).
    Each write is fenced by the lease (SQL, no MLflow call): an attempt taken over writes
    nothing more.
    """
    stage, model_name, number = request.stage, request.version.model.name, request.version.version
    stages = list(Stage.objects.prefetch_related("allowed_from"))
    live, versions = _read_candidate(stage, model_name, number, stages)
    if live.status and live.status != "READY":
        raise _PreconditionFailed(f"{model_name} v{number} is {live.status} in MLflow, not READY.")
    at = audit.utc_iso(timezone.now())
    recorded = request.manifest_state == ManifestState.READY
    tags = provenance.promotion_tags(
        request_id=request.pk,
        stage_name=stage.name,
        approved_by=approvers.usernames,
        at=at,
        artifact_sha256=request.manifest.get("sha256") if recorded else None,
    )
    # The versions read so far, with their tags: the displaced holder's are among them.
    known = {version.version: version for version in versions or ()}
    # What an earlier attempt of this request saw before it began writing, if one did.
    observed = request.observed_holders or {}
    missing = {
        "stage": bool(stage.mlflow_stage) and live.current_stage != stage.mlflow_stage,
        "alias": bool(stage.mlflow_alias) and stage.mlflow_alias not in live.aliases,
    }
    if not any(missing.values()):
        # A crash after the MLflow writes and before our commit: finish without a second move,
        # writing the provenance tags if the crash came before them (the request id is written
        # last). The holders are the ones the crashed attempt saw: MLflow no longer shows them.
        previous_stage, previous_alias = observed.get("stage", []), observed.get("alias", [])
        if live.tags.get(provenance.REQUEST_ID) != str(request.pk):
            _mark_displaced(request, _displaced(stage, previous_stage, previous_alias), known, lease, at)
            _tag_promoted(live, tags, lease)
        return _outcome(stage, previous_stage, previous_alias, written=[], live=live)

    # A half this request set out to write and now finds in place is its own work: an attempt
    # crashed between the stage and the alias. That attempt passed the catalog rules and the
    # checks before writing; stopping now would leave the stage half bound, so finish it.
    resuming = any(not missing[half] for half in observed.get("writing", ()))
    if not resuming:
        _check_preconditions(request, live, stages)
        _check_model_files(request)

    previous_stage = observed.get("stage", [])
    if missing["stage"] or "stage" not in observed:
        previous_stage = [
            v.version for v in versions or () if v.current_stage == stage.mlflow_stage and v.version != number
        ]
    previous_alias = observed.get("alias", [])
    if missing["alias"]:
        holder = gateway.get_version_by_alias(model_name, stage.mlflow_alias)
        previous_alias = [holder.version] if holder is not None and holder.version != number else []
        if previous_alias:
            known[holder.version] = holder
    writing = [half for half, needed in missing.items() if needed]
    # Kept before the first write, so a retry after a crash can record who held the target.
    lease.fence(observed_holders={"stage": previous_stage, "alias": previous_alias, "writing": writing})
    if missing["stage"]:
        gateway.transition_stage(
            model_name, number, stage.mlflow_stage, archive_existing=stage.archive_existing
        )
    if missing["alias"]:
        lease.fence()
        gateway.set_alias(model_name, stage.mlflow_alias, number)
    _mark_displaced(request, _displaced(stage, previous_stage, previous_alias), known, lease, at)
    _tag_promoted(live, tags, lease)
    return _outcome(stage, previous_stage, previous_alias, written=writing, live=live)


def _displaced(stage: Stage, previous_stage: list[int], previous_alias: list[int]) -> list[int]:
    """The versions this promotion takes the stage from: the legacy stage's holders when MLflow
    archives them, and the alias's previous holder. Holders left in place are not displaced."""
    archived = previous_stage if stage.mlflow_stage and stage.archive_existing else []
    return sorted({*archived, *previous_alias})


def _mark_displaced(
    request: PromotionRequest,
    displaced: list[int],
    known: dict[int, gateway.ModelVersionInfo],
    lease: _Lease,
    at: str,
) -> None:
    """Close the stage record of each displaced version (or drop its old `promotion.stage` tag),
    so that its tags no longer say it holds the stage: one call each, none when nothing says so.

    Written before the promoted version's tags, whose request id marks the apply as done.
    """
    model_name = request.version.model.name
    for number in displaced:
        try:
            # Read only after a crash: the attempt that saw the holder is gone, and so is its read.
            holder = known.get(number) or gateway.get_model_version(model_name, number)
            change = provenance.displacement(
                holder.tags, stage_name=request.stage.name, request_id=request.pk, at=at
            )
            if change is None:
                continue
            key, value = change
            lease.fence()
            if value is None:
                gateway.delete_version_tag(model_name, number, key)
            else:
                gateway.set_version_tags(model_name, number, {key: value})
        except gateway.VersionNotFound:
            continue  # deleted since: a version that is gone claims no stage


def _tag_promoted(live: gateway.ModelVersionInfo, tags: dict[str, str], lease: _Lease) -> None:
    lease.fence()
    if provenance.LEGACY_STAGE in live.tags:
        # Written before the per-stage records, it names the stage of an earlier promotion.
        gateway.delete_version_tag(live.name, live.version, provenance.LEGACY_STAGE)
    gateway.set_version_tags(live.name, live.version, tags)


def _check_preconditions(
    request: PromotionRequest, live: gateway.ModelVersionInfo, stages: list[Stage]
) -> None:
    stage, model_name, number = request.stage, request.version.model.name, request.version.version
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


def _check_model_files(request: PromotionRequest) -> None:
    """The version's files are still those the approvals covered (PROMOTION_MANIFEST_CHECK:
    every hash again, or `quick`: every size and the hashes of MLmodel and the small files).

    A request filed without a recorded manifest (before it existed, or with the check off) has
    nothing to compare with and is applied as approved.
    """
    mode = settings.PROMOTION_MANIFEST_CHECK
    if mode == "off" or request.manifest_state != ManifestState.READY:
        return
    model_name, number = request.version.model.name, request.version.version
    try:
        found = gateway.artifact_manifest(
            model_name, number, mode=mode, small_file_bytes=settings.PROMOTION_MANIFEST_QUICK_MAX_BYTES
        )
    except gateway.ArtifactsUnreadable as exc:
        raise _PreconditionFailed(f"The model files changed after approval: {exc}") from None
    changes = manifest_changes(request.manifest.get("files", []), found.files)
    if changes:
        raise _PreconditionFailed("The model files changed after approval: " + "; ".join(changes))


def _outcome(
    stage: Stage,
    previous_stage: list[int],
    previous_alias: list[int],
    *,
    written: list[str],
    live: gateway.ModelVersionInfo,
) -> _Outcome:
    return _Outcome(
        previous_holders=sorted({*previous_stage, *previous_alias}),
        # MLflow archives the legacy stage's holders with the transition itself.
        archived=sorted(previous_stage) if stage.mlflow_stage and stage.archive_existing else [],
        already_in_place=not written,
        live=live,
        written=written,
    )


def _update_mirror(request: PromotionRequest, outcome: _Outcome) -> None:
    """Record in the mirror what we just did, so the next sync sees no drift."""
    stage, version = request.stage, request.version
    model = RegisteredModel.objects.select_for_update(**ROW_LOCK).get(pk=version.model_id)
    stages = {}
    if stage.mlflow_stage:
        stages = {number: "Archived" for number in outcome.archived}
        stages[version.version] = stage.mlflow_stage
    alias = (stage.mlflow_alias, version.version) if stage.mlflow_alias else None
    mirror_binding_set(model, stages=stages, alias=alias)
