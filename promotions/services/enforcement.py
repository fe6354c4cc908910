"""Enforcement of a stage's MLflow binding: what the workflow does about drift.

A stage in the catalog either only flags a change made outside the workflow (`detect`) or has
the worker undo it (`revert`). The drift receiver calls `drift_revert_record` inside the sync's
transaction: one `DriftRevert` row per drift event that touched a catalog stage, with who held
the binding before the change. In revert mode the row is the outbox of the worker's
`drift_revert`, published on commit and swept by `reverts_sweep` when a publish is lost.

A revert re-reads MLflow before writing and writes only what differs from the record (twice run,
one write); it never writes while a request for the same binding is being applied under a live
lease (it waits, with the apply's backoff); and it keeps the writes it is about to make on its
row first, so the next sync knows them as ours (`reverted_by_us`), not as new drift.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from common.redact import redact
from promotions import audit, catalog, notifications, outbox, policy
from promotions.errors import AlreadyDecided, NotAllowed
from promotions.models import MAX_TEXT, DriftRevert, PromotionRequest, Stage
from promotions.services.applying import retry_delay
from promotions.services.lifecycle import ROW_LOCK
from promotions.text import clean_text
from registry_sync import gateway
from registry_sync.models import DriftEvent, ModelVersion, RegisteredModel
from registry_sync.services import mirror_binding_set

logger = logging.getLogger(__name__)
REVERT_TASK = "promotions.revert_drift"
Status = DriftRevert.Status
Kind = DriftEvent.Kind
REVERT = Stage.Enforcement.REVERT
# Legacy stages nobody "holds": a version returned to them displaces no one.
UNHELD = ("None", "Archived")


class RevertDeferred(Exception):
    """The revert must wait (an apply holds the binding, or MLflow is not answering): retry in
    `delay` seconds."""

    def __init__(self, reason: str, delay: float):
        super().__init__(reason)
        self.delay = delay


# --- recording, inside the sync's transaction ---------------------------------------------------


def drift_respond(event: DriftEvent) -> DriftRevert | None:
    """Announce a recorded drift (e-mail, webhooks), and record what a revert of it puts back,
    scheduling the revert when a stage it touched is in revert mode.

    Runs in the sync's transaction before the sync writes the page the change was seen on: the
    mirror still shows the binding as it was.
    """
    notifications.notify_registry("registry.drift", event.pk)
    stages = catalog.drift_stages(event)
    if not stages:
        return None
    enforced = [s for s in stages if s.enforcement == REVERT]
    # A change on top of an earlier drift not yet undone: the record is what held the binding
    # before the first one, not the intruder that the second change displaced.
    earlier = (
        DriftRevert.objects.filter(
            drift_event__model=event.model_id,
            drift_event__kind=event.kind,
            status__in=(Status.PENDING, Status.FAILED, Status.DETECTED),
        )
        .filter(
            Q(drift_event__version=event.version)
            if event.kind == Kind.STAGE
            else Q(drift_event__alias=event.alias)
        )
        .order_by("created_at", "pk")
        .first()
    )
    if event.kind == Kind.STAGE:
        version_stage_before = earlier.version_stage_before if earlier else event.before
        holders = {
            s.mlflow_stage: _holders(event.model_id, s.mlflow_stage, exclude=event.version)
            for s in stages
            if s.mlflow_stage == event.after and s.mlflow_stage not in UNHELD
        }
    else:
        version_stage_before = ""
        key = f"@{event.alias}"
        holders = (
            {key: earlier.holders_before.get(key, [])}
            if earlier
            else {key: [int(event.before)] if event.before else []}
        )
    now = timezone.now()
    revert = DriftRevert.objects.create(
        drift_event=event,
        status=Status.PENDING if enforced else Status.DETECTED,
        stages=sorted({s.name for s in stages}),
        holders_before=holders,
        version_stage_before=version_stage_before,
        created_at=now,
        updated_at=now,
        not_before=now,
    )
    if enforced:
        transaction.on_commit(lambda: outbox.publish(REVERT_TASK, [revert.pk]))
    return revert


def _holders(model_id: int, mlflow_stage: str, *, exclude: int | None) -> list[int]:
    return sorted(
        ModelVersion.objects.filter(model_id=model_id, current_stage=mlflow_stage, is_deleted=False)
        .exclude(version=exclude)
        .values_list("version", flat=True)
    )


def reverted_by_us(model: RegisteredModel, version: int | None, *, kind: str, alias: str, after: str) -> bool:
    """A binding change is ours when a revert recorded it among its writes within the drift window."""
    recent = timezone.now() - timedelta(seconds=settings.PROMOTION_DRIFT_WINDOW_SECONDS)
    for changes in (
        DriftRevert.objects.filter(drift_event__model=model, updated_at__gte=recent)
        .exclude(changes=[])
        .values_list("changes", flat=True)
    ):
        for change in changes or []:
            if change.get("kind") != kind or change.get("to") != after:
                continue
            if kind == Kind.STAGE and change.get("version") == version:
                return True
            if kind == Kind.ALIAS and change.get("alias") == alias:
                return True
    return False


# --- the worker's revert ----------------------------------------------------------------------


@dataclass
class _Plan:
    """The writes that put the record back, worked out from MLflow as it is now."""

    stage_moves: list[tuple[int, str, str]]  # (version, from, to)
    alias_move: tuple[str, str, str] | None  # (alias, from holder, to holder; "" for nobody)
    # The record, whether or not MLflow still needed the writes: what the mirror shows after.
    stage_record: dict[int, str] = field(default_factory=dict)
    alias_record: tuple[str, int | None] | None = None

    @property
    def changes(self) -> list[dict]:
        moves = [
            {"kind": Kind.STAGE, "version": v, "from": old, "to": new} for v, old, new in self.stage_moves
        ]
        if self.alias_move:
            alias, old, new = self.alias_move
            moves.append({"kind": Kind.ALIAS, "alias": alias, "from": old, "to": new})
        return moves


def _claim(revert_id: int) -> DriftRevert | None:
    now = timezone.now()
    stale = now - timedelta(seconds=settings.PROMOTION_STUCK_AFTER_SECONDS)
    claimed = (
        DriftRevert.objects.filter(pk=revert_id)
        .filter(Q(status=Status.PENDING) | Q(status=Status.REVERTING, claimed_at__lt=stale))
        .update(status=Status.REVERTING, claimed_at=now, updated_at=now)
    )
    if not claimed:
        return None
    return DriftRevert.objects.select_related("drift_event__model").get(pk=revert_id)


def _mine(revert: DriftRevert):
    return DriftRevert.objects.filter(pk=revert.pk, status=Status.REVERTING, claimed_at=revert.claimed_at)


def _enforced_stages(revert: DriftRevert) -> list[Stage]:
    return list(Stage.objects.filter(name__in=revert.stages, is_active=True, enforcement=REVERT))


def _binding_filter(revert: DriftRevert, stages: list[Stage]) -> Q:
    """Requests whose stage is bound to what this revert would write."""
    event = revert.drift_event
    if event.kind == Kind.ALIAS:
        return Q(stage__mlflow_alias=event.alias)
    legacy = {s for s in (event.before, event.after) if s} | set(revert.holders_before)
    return Q(stage__mlflow_stage__in=sorted(legacy - {""}))


def _binding_requests(revert: DriftRevert, stages: list[Stage], **state) -> PromotionRequest | None:
    """A request of the drift's model for the binding this revert would write, in `state`."""
    return (
        PromotionRequest.objects.filter(
            _binding_filter(revert, stages), version__model=revert.drift_event.model_id, **state
        )
        .only("pk")
        .first()
    )


def apply_in_progress(revert: DriftRevert, stages: list[Stage]) -> PromotionRequest | None:
    """A request for the same model and binding being applied under a live lease."""
    return _binding_requests(
        revert, stages, status=PromotionRequest.Status.APPLYING, lease_expires_at__gt=timezone.now()
    )


def _applied_since(revert: DriftRevert, stages: list[Stage]) -> PromotionRequest | None:
    """A request for the binding applied after the drift was seen: it defines the binding now."""
    return _binding_requests(
        revert,
        stages,
        status=PromotionRequest.Status.APPLIED,
        applied_at__gt=revert.drift_event.detected_at,
    )


def _plan(revert: DriftRevert, stages: list[Stage]) -> _Plan:
    """Read MLflow now and work out the writes that put the record back."""
    event, name = revert.drift_event, revert.drift_event.model.name
    if event.kind == Kind.ALIAS:
        wanted = revert.holders_before.get(f"@{event.alias}", [])
        live = gateway.get_version_by_alias(name, event.alias)
        now_holder = str(live.version) if live else ""
        to = str(wanted[0]) if wanted else ""
        move = None if now_holder == to else (event.alias, now_holder, to)
        return _Plan([], move, alias_record=(event.alias, int(to) if to else None))
    governed = {s.mlflow_stage for s in stages if s.mlflow_stage}
    wanted: dict[int, str] = {}
    # The intruder goes back where it was, the holders it displaced back to their stage.
    if event.before in governed or event.after in governed:
        wanted[event.version] = revert.version_stage_before or event.before
    for legacy_stage, versions in revert.holders_before.items():
        if legacy_stage in governed:
            wanted.update({number: legacy_stage for number in versions if number != event.version})
    moves, record = [], {}
    for number, target in wanted.items():
        try:
            live = gateway.get_model_version(name, number)
        except gateway.VersionNotFound:
            continue  # deleted in MLflow since: nothing left to put back
        record[number] = target
        if live.current_stage != target:
            moves.append((number, live.current_stage, target))
    return _Plan(moves, None, stage_record=record)


def _write(revert: DriftRevert, plan: _Plan, stages: list[Stage]) -> None:
    name = revert.drift_event.model.name
    # Kept before the first write: the next sync finds these writes ours, not new drift.
    if not _mine(revert).update(changes=plan.changes, updated_at=timezone.now()):
        raise _ClaimLost
    for number, _old, target in plan.stage_moves:
        _wait_for_apply(revert, stages)
        # Never archive on the way back: the versions MLflow holds there now are put back by
        # their own moves, and archiving would send an approved holder away again.
        gateway.transition_stage(name, number, target, archive_existing=False)
    if plan.alias_move:
        _wait_for_apply(revert, stages)
        alias, _old, holder = plan.alias_move
        if holder:
            gateway.set_alias(name, alias, int(holder))
        else:
            gateway.delete_alias(name, alias)


class _ClaimLost(Exception):
    pass


def _wait_for_apply(revert: DriftRevert, stages: list[Stage]) -> None:
    applying = apply_in_progress(revert, stages)
    if applying is not None:
        delay = retry_delay(revert.attempts + 1)
        _mine(revert).update(
            status=Status.PENDING,
            updated_at=timezone.now(),
            not_before=timezone.now() + timedelta(seconds=delay),
            last_error=f"Waiting: request #{applying.pk} is being applied to the same binding.",
        )
        raise RevertDeferred(f"request #{applying.pk} is being applied", delay)


def drift_revert(*, revert_id: int) -> str:
    """Undo one drift event in MLflow, from the worker. Idempotent; returns what happened.

    Raises RevertDeferred when it must wait (an apply in progress, MLflow unreachable).
    """
    revert = _claim(revert_id)
    if revert is None:
        current = DriftRevert.objects.filter(pk=revert_id).values_list("status", flat=True).first()
        return f"skipped ({current or 'missing'})"
    stages = _enforced_stages(revert)
    try:
        if not stages:
            # The stage went back to detect mode since: the drift stays flagged, as it would be now.
            _mine(revert).update(status=Status.DETECTED, updated_at=timezone.now())
            return "not enforced"
        if (request := _applied_since(revert, stages)) is not None:
            return _finish(revert, Status.SUPERSEDED, outcome="superseded", plan=None, request_id=request.pk)
        _wait_for_apply(revert, stages)
        plan = _plan(revert, stages)
        if plan.changes:
            _write(revert, plan, stages)
        return _finish(
            revert, Status.REVERTED, outcome="reverted" if plan.changes else "already_in_place", plan=plan
        )
    except _ClaimLost:
        return "lost the claim"
    except gateway.RegistryUnavailable as exc:
        return _retry_later(revert, f"MLflow unreachable: {exc}", refused=False, detail=exc.detail)
    except gateway.RegistryPermissionDenied as exc:
        # Visible at once (the page, the log), and tried again: the credentials may be mended.
        return _retry_later(revert, str(exc), refused=True, detail=exc.detail)
    except (gateway.RegistryRejected, gateway.ModelNotFound, gateway.VersionNotFound) as exc:
        return _fail(
            revert, f"MLflow refused the revert: {exc}", attempts=revert.attempts + 1, detail=exc.detail
        )


def _retry_later(revert: DriftRevert, reason: str, *, refused: bool, detail: str = "") -> str:
    """Another attempt after the apply's backoff, or the end after PROMOTION_MAX_ATTEMPTS. A
    refusal is recorded as `registry.revert_failed` at every attempt; MLflow not answering only
    at the last. Raises RevertDeferred when there is another attempt to come."""
    reason, detail = redact(reason), redact(detail)
    attempts = revert.attempts + 1
    if attempts >= settings.PROMOTION_MAX_ATTEMPTS:
        return _fail(
            revert, f"{reason} (gave up after {attempts} attempts)", attempts=attempts, detail=detail
        )
    delay = retry_delay(attempts)
    now = timezone.now()
    with transaction.atomic():
        if not _mine(revert).update(
            status=Status.PENDING,
            attempts=attempts,
            last_error=reason[:2000],
            last_error_detail=detail[:4000],
            updated_at=now,
            not_before=now + timedelta(seconds=delay),
        ):
            return "lost the claim"
        if refused:
            event = revert.drift_event
            audit.record(
                action=audit.AuditAction.REGISTRY_REVERT_FAILED,
                meaning=f"Revert refused: {event.model.name} {event.describe()}: {reason}; tried again",
                details={
                    **_details(revert, "refused", None),
                    "reason": reason,
                    "attempts": attempts,
                    "retry_in_seconds": round(delay, 1),
                },
                **_audit_context(revert),
            )
    raise RevertDeferred(reason, delay)


def _who(revert: DriftRevert) -> dict:
    """Who MLflow says made the change, as far as it says (it records no author of a stage
    transition or alias move; the version's own user is the nearest)."""
    event = revert.drift_event
    number = event.version
    if event.kind == Kind.ALIAS and event.after:
        number = int(event.after)
    try:
        user = gateway.version_user_id(event.model.name, number) if number else ""
    except gateway.RegistryError:
        user = ""
    return {"changed_by": user or "unknown", "mlflow_version_user_id": user or None}


def _details(revert: DriftRevert, outcome: str, plan: _Plan | None, **extra) -> dict:
    event = revert.drift_event
    return {
        "outcome": outcome,
        "drift_event_id": event.pk,
        "change": {"kind": event.kind, "alias": event.alias, "before": event.before, "after": event.after},
        "stages": revert.stages,
        "restored": plan.changes if plan else [],
        "holders_before": revert.holders_before,
        **extra,
    }


def _audit_context(revert: DriftRevert) -> dict:
    event = revert.drift_event
    binding = event.before if event.kind == Kind.STAGE else f"@{event.alias}"
    target = event.after if event.kind == Kind.STAGE else f"@{event.alias}"
    return {
        "model_name": event.model.name,
        "version": event.version,
        "from_stage": binding,
        "to_stage": target,
    }


def _finish(revert: DriftRevert, status: str, *, outcome: str, plan: _Plan | None, **extra) -> str:
    event = revert.drift_event
    who = _who(revert) if outcome in ("reverted", "already_in_place") else {}
    now = timezone.now()
    with transaction.atomic():
        if not _mine(revert).update(
            status=status, finished_at=now, updated_at=now, last_error="", last_error_detail=""
        ):
            return "lost the claim"
        if plan is not None:
            # The mirror shows the record at once: a change made in MLflow right after the revert
            # is compared with what was put back, not with the intruder the mirror saw last
            # (which a second revert would otherwise "restore").
            model = RegisteredModel.objects.select_for_update(**ROW_LOCK).get(pk=event.model_id)
            mirror_binding_set(model, stages=plan.stage_record, alias=plan.alias_record)
        _event_resolve(event)
        words = {
            "reverted": "Reverted",
            "already_in_place": "Reverted (MLflow already showed the record)",
            "superseded": "Not reverted (a request applied since defines the binding)",
        }[outcome]
        audit.record(
            action=audit.AuditAction.REGISTRY_REVERTED,
            meaning=f"{words}: {event.model.name} {event.describe()}",
            details=_details(revert, outcome, plan, **who, **extra),
            **_audit_context(revert),
        )
        notifications.notify_registry("registry.reverted", event.pk)
    return outcome


def _fail(revert: DriftRevert, reason: str, *, attempts: int, detail: str = "") -> str:
    reason, detail = redact(reason), redact(detail)
    event = revert.drift_event
    now = timezone.now()
    with transaction.atomic():
        if not _mine(revert).update(
            status=Status.FAILED,
            attempts=attempts,
            last_error=reason[:2000],
            last_error_detail=detail[:4000],
            finished_at=now,
            updated_at=now,
        ):
            return "lost the claim"
        audit.record(
            action=audit.AuditAction.REGISTRY_REVERT_FAILED,
            meaning=f"Revert failed: {event.model.name} {event.describe()}: {reason}",
            details={**_details(revert, "failed", None), "reason": reason, "attempts": attempts},
            **_audit_context(revert),
        )
        notifications.notify_registry("registry.revert_failed", event.pk)
    logger.warning("Revert of drift #%s failed: %s", event.pk, reason)
    return "failed"


def _event_resolve(event: DriftEvent) -> None:
    """Mark one drift event resolved; the model's flag goes with its last unresolved event."""
    DriftEvent.objects.filter(pk=event.pk).update(resolved=True)
    if not DriftEvent.objects.filter(model_id=event.model_id, resolved=False).exists():
        RegisteredModel.objects.filter(pk=event.model_id).update(has_drift=False)


def reverts_sweep(*, now=None) -> list[int]:
    """Publish reverts whose task was lost: pending past their time, or claimed by an attempt
    that stopped (a killed worker)."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.PROMOTION_STUCK_AFTER_SECONDS)
    return outbox.sweep(
        DriftRevert.objects.filter(
            Q(status=Status.PENDING, not_before__lt=stale) | Q(status=Status.REVERTING, claimed_at__lt=stale)
        ).order_by("pk"),
        REVERT_TASK,
    )


# --- people -----------------------------------------------------------------------------------


def drift_acknowledge(*, event: DriftEvent, actor, comment: str) -> DriftEvent:
    """A stage admin accepts a drift with a comment: the flag goes, a pending revert is called off."""
    model = event.model
    if not policy.is_stage_admin(actor):
        audit.record_denied(
            actor=actor,
            what=f"acknowledge drift #{event.pk} of {model.name}",
            reason="not a stage admin",
            model_name=model.name,
            version=event.version,
        )
        raise NotAllowed("Only stage admins acknowledge drift.")
    comment = clean_text(
        comment,
        what="comment",
        max_length=MAX_TEXT,
        required="Say why the change may stand: a comment is required.",
    )
    with transaction.atomic():
        if not DriftEvent.objects.filter(pk=event.pk, resolved=False).update(resolved=True):
            raise AlreadyDecided("This drift was already resolved.")
        if not DriftEvent.objects.filter(model_id=event.model_id, resolved=False).exists():
            RegisteredModel.objects.filter(pk=event.model_id).update(has_drift=False)
        called_off = DriftRevert.objects.filter(
            drift_event=event, status__in=(Status.PENDING, Status.FAILED, Status.DETECTED)
        ).update(status=Status.ACKNOWLEDGED, updated_at=timezone.now(), finished_at=timezone.now())
        audit.record(
            action=audit.AuditAction.REGISTRY_DRIFT_ACKNOWLEDGED,
            actor=actor,
            meaning=f"Drift acknowledged: {model.name} {event.describe()}: {comment}",
            details={
                "drift_event_id": event.pk,
                "comment": comment,
                "change": {
                    "kind": event.kind,
                    "alias": event.alias,
                    "before": event.before,
                    "after": event.after,
                },
                "revert_called_off": bool(called_off),
            },
            model_name=model.name,
            version=event.version,
        )
    event.refresh_from_db()
    return event
