"""Incremental sync of the MLflow registry into the mirror, and the mirror's drift records.

A sync pages through MLflow, compares each page with the mirror in one query, and writes
only what changed: a re-sync of an unchanged registry writes no mirror row. The number of
SQL queries grows with the number of pages, not with the number of versions.

The sync announces what changed through registry_sync.signals and leaves the meaning to the
apps above: whether a stage or alias change is drift, and what a changed version means for
anything that rests on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from django.db import models, transaction
from django.utils import timezone

from common import telemetry
from common.redact import redact
from registry_sync import gateway
from registry_sync.models import DriftEvent, ModelVersion, RegisteredModel, SyncRun, SyncWatermark
from registry_sync.signals import binding_changed, versions_changed

logger = logging.getLogger(__name__)

MODEL_FIELDS = (
    "description",
    "tags",
    "aliases",
    "creation_timestamp",
    "last_updated_timestamp",
    "is_deleted",
)
VERSION_FIELDS = (
    "current_stage",
    "aliases",
    "status",
    "run_id",
    "source",
    "description",
    "tags",
    "creation_timestamp",
    "last_updated_timestamp",
    "is_deleted",
    "user_id",
)
WRITE_BATCH = 1000


@dataclass
class SyncStats:
    models: int = 0
    versions: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    drift: int = 0
    changed_version_ids: set[int] = field(default_factory=set)


class SyncFailed(Exception):
    """`cause` is the gateway's exception: callers tell "not answering" from "refused"."""

    def __init__(self, run: SyncRun, cause: gateway.RegistryError | None = None):
        super().__init__(run.error)
        self.run = run
        self.cause = cause


def sync_registry(
    *,
    trigger: str,
    model_name: str | None = None,
    full: bool = False,
    progress: Callable[[SyncStats], None] | None = None,
    page_size: int | None = None,
) -> SyncRun:
    """Bring the mirror up to date with MLflow (one model, or all of them).

    On a registry failure the run is recorded with its error and SyncFailed is raised; the
    mirror keeps its last good state (each page is committed on its own, and nothing is
    marked deleted unless the whole scope was read).

    The returned run carries the counts and `changed_version_ids`; versions_changed is sent
    with those ids once the run is saved, on failure too (the pages written before it stand).
    """
    run = SyncRun.objects.create(
        trigger=trigger, scope=model_name or "", full=full, started_at=timezone.now()
    )
    stats = SyncStats()
    error, cause = "", None
    try:
        _sync(stats, model_name=model_name, full=full, progress=progress, page_size=page_size)
    except gateway.RegistryError as exc:
        error, cause = redact(str(exc)) or type(exc).__name__, exc
        # The run keeps the sentence pages show; the log keeps MLflow's own words as well.
        logger.warning("Registry sync failed: %s (%s)", error, exc.detail or "no detail")
    return _run_finish(run, stats, error, cause)


def _run_finish(run: SyncRun, stats: SyncStats, error: str, cause: Exception | None) -> SyncRun:
    """Save the run with its counts, announce the changed versions (on a failure too: the pages
    written before it stand), then raise SyncFailed for a failed run or return it."""
    run.finished_at = timezone.now()
    run.models_seen, run.versions_seen = stats.models, stats.versions
    run.created, run.updated, run.deleted, run.drift = (
        stats.created,
        stats.updated,
        stats.deleted,
        stats.drift,
    )
    run.error = error
    run.save()
    telemetry.SYNC_DURATION.labels(trigger=run.trigger, outcome="failed" if error else "ok").observe(
        run.seconds
    )
    run.changed_version_ids = frozenset(stats.changed_version_ids)
    if run.changed_version_ids:
        versions_changed.send(sender=SyncRun, run=run, version_ids=run.changed_version_ids)
    if error:
        raise SyncFailed(run, cause)
    return run


def _sync(stats: SyncStats, *, model_name: str | None, full: bool, progress, page_size: int | None) -> None:
    seen_models: dict[str, RegisteredModel] = {}
    alias_maps: dict[str, dict[str, int]] = {}
    for page in gateway.iter_registered_model_pages(name=model_name, page_size=min(page_size or 1000, 1000)):
        with transaction.atomic():
            for row in _sync_model_page(page, stats):
                seen_models[row.name] = row
        for info in page:
            alias_maps[info.name] = info.aliases
        stats.models += len(page)

    seen_versions: dict[int, set[int]] = {row.pk: set() for row in seen_models.values()}
    for page in gateway.iter_model_version_pages(name=model_name, page_size=page_size or 10000):
        # Compare and read the runs from MLflow first, then write in one short transaction:
        # a slow MLflow never holds the database (on SQLite, its one write lock).
        plan = _plan_version_page(page, seen_models, alias_maps, seen_versions, full=full)
        with transaction.atomic():
            _write_version_page(plan, stats)
        stats.versions += len(page)
        if progress:
            progress(stats)

    with transaction.atomic():
        _mark_vanished(seen_models, seen_versions, stats, model_name=model_name)


def _sync_model_page(page: list[gateway.RegisteredModelInfo], stats: SyncStats) -> list[RegisteredModel]:
    # Concurrent syncs of one model (webhook, beat, a filing) take turns on its row: the second
    # reads what the first wrote instead of announcing the same change again. Locked in pk order,
    # so two syncs of overlapping pages cannot deadlock. NO KEY UPDATE: a row inserted elsewhere
    # with a key to the model (checked at that COMMIT, with a key-share lock) never waits for it.
    existing = {
        m.name: m
        for m in RegisteredModel.objects.select_for_update(no_key=True)
        .filter(name__in=[info.name for info in page])
        .order_by("pk")
    }
    now = timezone.now()
    to_create, to_update = [], []
    for info in page:
        values = {
            "description": info.description,
            "tags": info.tags,
            "aliases": info.aliases,
            "creation_timestamp": info.creation_timestamp,
            "last_updated_timestamp": info.last_updated_timestamp,
            "is_deleted": False,
        }
        row = existing.get(info.name)
        if row is None:
            to_create.append(RegisteredModel(name=info.name, last_synced_at=now, **values))
            continue
        old_aliases = dict(row.aliases)
        if any(getattr(row, key) != value for key, value in values.items()):
            for key, value in values.items():
                setattr(row, key, value)
            row.last_synced_at = now
            to_update.append(row)
        if old_aliases != info.aliases:
            _announce_alias_changes(row, old_aliases, info, stats)
    if to_create:
        # A model nobody has mirrored yet has no row to lock: a concurrent sync may insert it
        # first, and then its row is the one read back below.
        RegisteredModel.objects.bulk_create(to_create, batch_size=WRITE_BATCH, ignore_conflicts=True)
        existing.update(
            {m.name: m for m in RegisteredModel.objects.filter(name__in=[m.name for m in to_create])}
        )
    if to_update:
        RegisteredModel.objects.bulk_update(
            to_update, [*MODEL_FIELDS, "last_synced_at", "has_drift"], batch_size=WRITE_BATCH
        )
    return [existing[info.name] for info in page]


def _version_aliases(alias_map: dict[str, int], version: int) -> list[str]:
    return sorted(alias for alias, holder in alias_map.items() if holder == version)


@dataclass
class _VersionPagePlan:
    """What one page of versions changes in the mirror, worked out before any write."""

    now: datetime
    to_create: list[ModelVersion] = field(default_factory=list)
    to_update: list[ModelVersion] = field(default_factory=list)
    # (model, stage before, the version as MLflow has it now)
    stage_changes: list[tuple[RegisteredModel, str, gateway.ModelVersionInfo]] = field(default_factory=list)


def _plan_version_page(page, seen_models, alias_maps, seen_versions, *, full: bool) -> _VersionPagePlan:
    """Compare a page with the mirror and fetch the runs of new or changed versions from MLflow.

    Runs outside any transaction: it reads the mirror and MLflow, and writes nothing but a
    missing model row (one statement of its own).
    """
    # A version can belong to a model registered after the model pages were read.
    missing = {info.name for info in page} - set(seen_models)
    if missing:
        for info in page:
            if info.name in missing and info.name not in seen_models:
                row, _ = RegisteredModel.objects.get_or_create(name=info.name)
                seen_models[info.name] = row
                seen_versions.setdefault(row.pk, set())
                alias_maps.setdefault(info.name, {})
    model_ids = {seen_models[info.name].pk for info in page}
    existing = {(v.model_id, v.version): v for v in ModelVersion.objects.filter(model_id__in=model_ids)}
    plan = _VersionPagePlan(now=timezone.now())
    need_run_data: list[ModelVersion] = []
    for info in page:
        model = seen_models[info.name]
        seen_versions[model.pk].add(info.version)
        values = {
            "current_stage": info.current_stage,
            "aliases": _version_aliases(alias_maps.get(info.name, {}), info.version),
            "status": info.status,
            "run_id": info.run_id,
            "source": info.source,
            "description": info.description,
            "tags": info.tags,
            "creation_timestamp": info.creation_timestamp,
            "last_updated_timestamp": info.last_updated_timestamp,
            "is_deleted": False,
            "user_id": info.user_id,
        }
        row = existing.get((model.pk, info.version))
        if row is None:
            row = ModelVersion(model=model, version=info.version, last_synced_at=plan.now, **values)
            plan.to_create.append(row)
            need_run_data.append(row)
            continue
        changed = any(getattr(row, key) != value for key, value in values.items())
        if not changed and not full:
            continue
        if row.current_stage != info.current_stage:
            plan.stage_changes.append((model, row.current_stage, info))
        for key, value in values.items():
            setattr(row, key, value)
        # A changed version may come with new run metrics (an evaluation logged, then a tag set).
        need_run_data.append(row)
        if changed:
            plan.to_update.append(row)

    if need_run_data:
        queued = {id(row) for row in plan.to_update}
        runs = gateway.get_runs_data([row.run_id for row in need_run_data])
        for row in need_run_data:
            data = runs.get(row.run_id)
            if data is not None and (
                row.metrics != data.metrics or row.params != data.params or row.run_user != data.user
            ):
                row.metrics, row.params, row.run_user = data.metrics, data.params, data.user
                if row.pk and id(row) not in queued:
                    plan.to_update.append(row)
    return plan


def _write_version_page(plan: _VersionPagePlan, stats: SyncStats) -> None:
    """Write a planned page, inside its transaction.

    The model rows are the page's lock (see _sync_model_page): a concurrent sync of the same
    model waits here; what it wrote meanwhile is then left out of this plan: versions it created
    are not inserted again, and a stage change it already mirrored is not announced twice.
    """
    model_ids = sorted(
        {row.model_id for row in [*plan.to_create, *plan.to_update]}
        | {m.pk for m, _, _ in plan.stage_changes}
    )
    if not model_ids:
        return
    list(
        RegisteredModel.objects.select_for_update(no_key=True)
        .filter(pk__in=model_ids)
        .order_by("pk")
        .values_list("pk")
    )
    if plan.to_create or plan.stage_changes:
        numbers = {row.version for row in plan.to_create} | {
            info.version for _, _, info in plan.stage_changes
        }
        now_stage = dict(
            ((model_id, number), stage)
            for model_id, number, stage in ModelVersion.objects.filter(
                model_id__in=model_ids, version__in=numbers
            ).values_list("model_id", "version", "current_stage")
        )
        plan.to_create = [row for row in plan.to_create if (row.model_id, row.version) not in now_stage]
        plan.stage_changes = [
            (model, before, info)
            for model, before, info in plan.stage_changes
            if now_stage.get((model.pk, info.version)) == before
        ]
    for model, before, info in plan.stage_changes:
        _announce_stage_change(model, before, info, stats)
    for row in plan.to_update:
        row.last_synced_at = plan.now
    if plan.to_create:
        ModelVersion.objects.bulk_create(plan.to_create, batch_size=WRITE_BATCH)
        stats.created += len(plan.to_create)
    if plan.to_update:
        ModelVersion.objects.bulk_update(
            plan.to_update,
            [*VERSION_FIELDS, "metrics", "params", "run_user", "last_synced_at"],
            batch_size=WRITE_BATCH,
        )
        stats.updated += len(plan.to_update)
        stats.changed_version_ids.update(row.pk for row in plan.to_update)


def _mark_vanished(seen_models, seen_versions, stats: SyncStats, *, model_name: str | None) -> None:
    now = timezone.now()
    models = RegisteredModel.objects.filter(is_deleted=False)
    if model_name:
        models = models.filter(name=model_name)
    vanished_models = models.exclude(name__in=list(seen_models)) if len(seen_models) < 5000 else None
    if vanished_models is None:
        vanished_ids = [pk for pk, name in models.values_list("pk", "name") if name not in seen_models]
    else:
        vanished_ids = list(vanished_models.values_list("pk", flat=True))
    if vanished_ids:
        RegisteredModel.objects.filter(pk__in=vanished_ids).update(is_deleted=True, last_synced_at=now)
        stats.deleted += ModelVersion.objects.filter(model_id__in=vanished_ids, is_deleted=False).update(
            is_deleted=True, last_synced_at=now
        )
    live = ModelVersion.objects.filter(is_deleted=False)
    if model_name:
        live = live.filter(model__name=model_name)
    gone = [
        pk
        for pk, model_id, number in live.values_list("pk", "model_id", "version")
        if model_id in seen_versions and number not in seen_versions[model_id]
    ]
    if gone:
        stats.deleted += ModelVersion.objects.filter(pk__in=gone).update(is_deleted=True, last_synced_at=now)
        stats.changed_version_ids.update(gone)


# --- binding changes and drift ----------------------------------------------------------------


def _announce_binding_change(model: RegisteredModel, stats: SyncStats, **change) -> None:
    """Send binding_changed; the change counts as drift when a receiver recorded it as such.

    The receiver that decides whether a change is drift is the one that records it, and its
    answer (the DriftEvent, or None) is what the sync counts: one decision, made once, with no
    second query or registered predicate, and SyncRun.drift stays exact without this app
    knowing what drift means. With no receiver connected a change is mirrored, not counted.
    """
    responses = binding_changed.send(sender=RegisteredModel, model=model, **change)
    if any(response for _, response in responses):
        stats.drift += 1


def _announce_stage_change(model: RegisteredModel, before: str, info, stats: SyncStats) -> None:
    _announce_binding_change(
        model,
        stats,
        version=info.version,
        kind=DriftEvent.Kind.STAGE,
        alias="",
        before=before,
        after=info.current_stage,
        mlflow_timestamp=info.last_updated_timestamp,
    )


def _announce_alias_changes(row: RegisteredModel, old: dict[str, int], info, stats: SyncStats) -> None:
    for alias in sorted(set(old) | set(info.aliases)):
        before, after = old.get(alias), info.aliases.get(alias)
        if before == after:
            continue
        _announce_binding_change(
            row,
            stats,
            version=after if after is not None else before,
            kind=DriftEvent.Kind.ALIAS,
            alias=alias,
            before="" if before is None else str(before),
            after="" if after is None else str(after),
            mlflow_timestamp=info.last_updated_timestamp,
        )


def drift_event_create(
    *,
    model: RegisteredModel,
    version: int | None,
    kind: str,
    alias: str = "",
    before: str = "",
    after: str = "",
    mlflow_timestamp: int | None = None,
) -> DriftEvent:
    """Record a change nobody asked for and flag the model; joins the caller's transaction.

    `model` is the instance the sync is writing: its has_drift is set in memory as well, so
    the page's bulk update of the model keeps the flag.
    """
    event = DriftEvent.objects.create(
        model=model,
        version=version,
        kind=kind,
        alias=alias,
        before=before,
        after=after,
        detected_at=timezone.now(),
        mlflow_timestamp=mlflow_timestamp,
    )
    if not model.has_drift:
        model.has_drift = True
        RegisteredModel.objects.filter(pk=model.pk).update(has_drift=True)
    return event


def mirror_binding_set(
    model: RegisteredModel,
    *,
    stages: dict[int, str] | None = None,
    alias: tuple[str, int | None] | None = None,
) -> None:
    """Write into the mirror a binding the workflow just wrote to MLflow: versions' legacy
    stages (`stages`: version number -> stage) and/or one alias (`alias`: name, holder or None
    for nobody). Called inside the caller's transaction, with `model` locked by it, so that a
    change made in MLflow right after is compared with what was written, not with what the
    mirror saw before."""
    for number, stage in (stages or {}).items():
        ModelVersion.objects.filter(model=model, version=number).update(current_stage=stage)
    if alias is None:
        return
    name, holder = alias
    aliases = dict(model.aliases or {})
    if holder is None:
        aliases.pop(name, None)
    else:
        aliases[name] = holder
    RegisteredModel.objects.filter(pk=model.pk).update(aliases=aliases)
    model.aliases = aliases
    for row in ModelVersion.objects.filter(model=model).only("pk", "aliases", "version"):
        current = row.aliases or []
        if row.version == holder:
            wanted = sorted({*current, name})
        else:
            wanted = sorted(a for a in current if a != name)
        if wanted != current:
            ModelVersion.objects.filter(pk=row.pk).update(aliases=wanted)


def mirror_model_tags_set(model: RegisteredModel, *, tags: dict[str, str]) -> bool:
    """Write a registered model's tags just read from MLflow into the mirror (the worker reads
    them before an apply, as the policy depends on them). Returns whether they changed."""
    if dict(model.tags or {}) == tags:
        return False
    RegisteredModel.objects.filter(pk=model.pk).update(tags=tags)
    model.tags = tags
    return True


def model_drift_resolve(*, model: RegisteredModel) -> None:
    with transaction.atomic():
        DriftEvent.objects.filter(model=model, resolved=False).update(resolved=True)
        RegisteredModel.objects.filter(pk=model.pk).update(has_drift=False)


def format_summary(run: SyncRun) -> str:
    seconds = f"{run.seconds:.2f}" if run.seconds is not None else "?"
    text = (
        f"models {run.models_seen}, versions {run.versions_seen}, created {run.created}, "
        f"updated {run.updated}, deleted {run.deleted}, drift {run.drift}, seconds {seconds}"
    )
    return f"{text}; error: {run.error}" if run.error else text


def wait_for_registry(timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            gateway.ping()
            return
        except gateway.RegistryUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


# --- the delta poll -----------------------------------------------------------------------------

DELTA_WATERMARK = "model_versions"
# Versions stamped up to this long before the watermark are compared again when the poll's
# pages reach them (they never cost another page): one updated in the same millisecond as the
# newest one seen, or committed by another MLflow worker a moment after a later stamp was read,
# is not skipped. Comparing an unchanged version again writes nothing.
DELTA_OVERLAP_MS = 2000
DELTA_PAGE_SIZE = 200


def sync_delta(*, page_size: int = DELTA_PAGE_SIZE) -> SyncRun | None:
    """Mirror the versions MLflow updated since the last poll: legacy stage transitions fast.

    MLflow sends no webhook for a stage transition, but the transition moves the version's
    last_updated_timestamp: one search, newest first, finds what changed since the watermark
    (gateway.iter_model_versions_updated_since), and the changed versions go through the
    sync's own page planning and writing, so binding_changed and versions_changed are sent
    exactly as for a full sync. The watermark moves forward only after the pages are written.

    Aliases are not in the version entities MLflow's search returns: they come with webhooks
    and the full sync; a version's mirrored aliases are kept from its model's mirrored map.
    Deleted versions and models are the full sync's too.

    A run is recorded (trigger "delta") only when the poll changed the mirror or failed; a poll
    that found nothing records nothing. Returns that run, or None.
    """
    started_at = timezone.now()
    mark, _ = SyncWatermark.objects.get_or_create(name=DELTA_WATERMARK)
    since = mark.last_updated_timestamp
    stats = SyncStats()
    newest = since
    error, cause = "", None
    try:
        for page in gateway.iter_model_versions_updated_since(
            since, page_size=page_size, reread_ms=DELTA_OVERLAP_MS
        ):
            names = sorted({info.name for info in page})
            seen_models = {m.name: m for m in RegisteredModel.objects.filter(name__in=names)}
            alias_maps = {name: dict(model.aliases) for name, model in seen_models.items()}
            seen_versions: dict[int, set[int]] = {m.pk: set() for m in seen_models.values()}
            plan = _plan_version_page(page, seen_models, alias_maps, seen_versions, full=False)
            with transaction.atomic():
                _write_version_page(plan, stats)
            stats.versions += len(page)
            stats.models += len(names)
            page_newest = max((info.last_updated_timestamp or 0) for info in page)
            newest = page_newest if newest is None else max(newest, page_newest)
    except gateway.RegistryError as exc:
        error, cause = redact(str(exc)) or type(exc).__name__, exc
        logger.warning("Registry delta poll failed: %s", error)
    # Pages come newest first: a poll that failed half-way has not read down to the watermark,
    # so the watermark stays where it is and the next poll reads the same versions again.
    if not error and newest is not None and (since is None or newest > since):
        # Forward only: a slower concurrent poll never moves it back.
        SyncWatermark.objects.filter(pk=mark.pk).filter(
            models.Q(last_updated_timestamp__isnull=True) | models.Q(last_updated_timestamp__lt=newest)
        ).update(last_updated_timestamp=newest, updated_at=timezone.now())
    if not (error or stats.created or stats.updated or stats.changed_version_ids):
        return None
    run = SyncRun(trigger=SyncRun.Trigger.DELTA, started_at=started_at)
    return _run_finish(run, stats, error, cause)
