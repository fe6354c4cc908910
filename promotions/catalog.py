"""The stage catalog read as rules: where a version stands, where it may go, who holds a stage.

Reads only: the mirror and the catalog, never MLflow. Filing, the bulk filer, the apply's
preconditions, the pages and the API all ask these same questions here.
"""

from __future__ import annotations

from django.db.models import Q

from promotions.errors import InvalidRequest, UnknownStage
from promotions.models import AuditEvent, PromotionRequest, Stage
from registry_sync.models import DriftEvent, ModelVersion, RegisteredModel


def stage_get_by_name(name: str) -> Stage:
    stage = Stage.objects.filter(name__iexact=(name or "").strip()).first()
    if stage is None:
        known = ", ".join(Stage.objects.filter(is_active=True).values_list("name", flat=True))
        raise UnknownStage(f"Stage '{name}' is not in the stage catalog. Known stages: {known}.")
    return stage


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


# Legacy stages that bind nothing a catalog stage holds.
_UNHELD = ("", "None", "Archived")


def stage_bound_to(*, mlflow_stage: str = "", alias: str = "") -> Stage | None:
    """The first active catalog stage (pipeline order) bound to an MLflow legacy stage or alias."""
    stages = Stage.objects.filter(is_active=True).order_by("position", "name")
    if alias:
        return stages.filter(mlflow_alias=alias).first()
    if mlflow_stage in _UNHELD:
        return None
    return stages.filter(mlflow_stage=mlflow_stage).first()


def drift_stages(event: DriftEvent) -> list[Stage]:
    """The active catalog stages whose MLflow binding a drift event touched."""
    stages = Stage.objects.filter(is_active=True)
    if event.kind == DriftEvent.Kind.STAGE:
        return list(stages.filter(mlflow_stage__in=[s for s in (event.before, event.after) if s]))
    return list(stages.filter(mlflow_alias=event.alias)) if event.alias else []


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


def held_before(*, version: ModelVersion, stage: Stage) -> bool:
    """Whether the record shows `version` holding `stage` at some time: what makes a request a
    rollback. A client may ask for a rollback; only this answer grants one.

    The record: our applied promotions (the version promoted, or the holder it replaced), the
    audit log's `promotion.applied` entries (their previous holders), and the mirror's drift
    events (the version moved into the stage's MLflow stage or given its alias outside us).
    """
    model = version.model
    if (
        PromotionRequest.objects.filter(
            version__model=model, stage=stage, status=PromotionRequest.Status.APPLIED
        )
        .filter(Q(version=version) | Q(previous_holder=version.version))
        .exists()
    ):
        return True
    # A drift event shows the version in the binding before or after the change.
    number = str(version.version)
    drifted = Q(pk__in=[])
    if stage.mlflow_stage:
        drifted |= Q(kind=DriftEvent.Kind.STAGE, version=version.version) & (
            Q(after=stage.mlflow_stage) | Q(before=stage.mlflow_stage)
        )
    if stage.mlflow_alias:
        drifted |= Q(kind=DriftEvent.Kind.ALIAS, alias=stage.mlflow_alias) & (
            Q(after=number) | Q(before=number)
        )
    if DriftEvent.objects.filter(drifted, model=model).exists():
        return True
    applied = AuditEvent.objects.filter(
        action="promotion.applied", model_name=model.name, to_stage=stage.name
    ).values_list("version", "details")
    return any(
        number == version.version or version.version in (details or {}).get("previous_holders", [])
        for number, details in applied.iterator()
    )
