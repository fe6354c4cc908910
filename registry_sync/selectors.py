"""Reads of the registry mirror for pages, the API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Max, Prefetch, QuerySet

from registry_sync.models import DriftEvent, ModelVersion, RegisteredModel, SyncRun

HELD_STAGES = ("Staging", "Production")


def last_successful_sync() -> SyncRun | None:
    return SyncRun.objects.filter(finished_at__isnull=False, error="").first()


def model_list(*, query: str = "") -> QuerySet[RegisteredModel]:
    holders = ModelVersion.objects.filter(current_stage__in=HELD_STAGES, is_deleted=False).only(
        "model_id", "version", "current_stage"
    )
    models = RegisteredModel.objects.filter(is_deleted=False)
    if query:
        models = models.filter(name__icontains=query)
    return (
        models.annotate(latest_version=Max("versions__version"))
        .order_by("name")
        .prefetch_related(Prefetch("versions", queryset=holders, to_attr="stage_holders"))
    )


@dataclass(frozen=True)
class ModelPage:
    model: RegisteredModel
    holders: dict[str, list[int]]
    aliases: dict[str, int]
    drift: list[DriftEvent]
    metric_keys: list[str]


def model_by_name(name: str) -> RegisteredModel | None:
    return RegisteredModel.objects.filter(name=name).first()


def model_page(model: RegisteredModel) -> ModelPage:
    holders: dict[str, list[int]] = {}
    for stage, version in (
        ModelVersion.objects.filter(model=model, current_stage__in=HELD_STAGES, is_deleted=False)
        .order_by("current_stage", "-version")
        .values_list("current_stage", "version")
    ):
        holders.setdefault(stage, []).append(version)
    latest = ModelVersion.objects.filter(model=model).order_by("-version").only("metrics").first()
    metric_keys = sorted(latest.metrics)[:4] if latest else []
    return ModelPage(
        model=model,
        holders=holders,
        aliases=dict(sorted(model.aliases.items())),
        drift=list(DriftEvent.objects.filter(model=model, resolved=False)[:10]),
        metric_keys=metric_keys,
    )


def model_versions(model: RegisteredModel) -> QuerySet[ModelVersion]:
    return ModelVersion.objects.filter(model=model).order_by("-version")


def versions_with_model_files(*, model_id: int, numbers: list[int]) -> QuerySet[ModelVersion]:
    """The model's versions with these numbers, each with its cached model files (the reverse
    one-to-one `model_files`, absent when not read yet), in one query."""
    return (
        ModelVersion.objects.filter(model_id=model_id, version__in=numbers)
        .select_related("model", "model_files")
        .order_by("version")
    )
