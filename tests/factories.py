"""Mirror rows for tests that do not need MLflow itself."""

from __future__ import annotations

import uuid

from promotions.models import Stage
from registry_sync.models import ModelVersion, RegisteredModel


def mirror_model(
    name: str | None = None, versions: dict[int, dict] | None = None, aliases=None
) -> RegisteredModel:
    """`versions` maps a number to fields, e.g. {1: {"current_stage": "Production"}}."""
    model = RegisteredModel.objects.create(
        name=name or f"model_{uuid.uuid4().hex[:8]}", aliases=aliases or {}
    )
    for number, fields in (versions or {1: {}}).items():
        fields = {"metrics": {"accuracy": 0.9}, "status": "READY", "run_id": uuid.uuid4().hex, **fields}
        if aliases:
            fields.setdefault("aliases", sorted(a for a, v in aliases.items() if v == number))
        ModelVersion.objects.create(model=model, version=number, **fields)
    return model


def version(model: RegisteredModel, number: int) -> ModelVersion:
    return ModelVersion.objects.select_related("model").get(model=model, version=number)


def stage(name: str) -> Stage:
    return Stage.objects.get(name=name)


def note_acceptance(monkeypatch, module, name: str, answers: list) -> None:
    """Wrap module.name (a parallel walk answering None when it has a doubt) so that each call
    appends to `answers` whether it accepted (True) or left the work to the one-process walk."""
    walk_in_parts = getattr(module, name)

    def spy(*args, **kwargs):
        walk = walk_in_parts(*args, **kwargs)
        answers.append(walk is not None)
        return walk

    monkeypatch.setattr(module, name, spy)
