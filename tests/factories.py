"""Mirror rows and audit histories for tests that do not need MLflow itself."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import User

from promotions import audit, services
from promotions.models import AuditEvent, Stage
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


def audit_history(count: int, *, action: str = "registry.drift", **fields) -> list[AuditEvent]:
    """`count` audit entries recorded one after another, meaning "entry 0", "entry 1", … unless told.

    A field given as a function is called with the entry's place in the run, e.g.
    `details=lambda i: {"i": i}`; any other value is the same in every entry.
    """
    fields = {"meaning": lambda i: f"entry {i}", **fields}
    return [
        audit.record(
            action=action, **{name: value(i) if callable(value) else value for name, value in fields.items()}
        )
        for i in range(count)
    ]


def sales_forecast_review(requester: User, reviewer: User) -> list[AuditEvent]:
    """Request #41, sales_forecast v5 Staging → Production, filed and approved once, with the
    awkward content real logs have: commas, quotes, non-ASCII."""
    move = {
        "model_name": "sales_forecast",
        "version": 5,
        "from_stage": "Staging",
        "to_stage": "Production",
        "request_id": 41,
    }
    return [
        audit.record(
            action="request.created",
            actor=requester,
            meaning='Requested: promote sales_forecast v5 to Production, "Q3" retrain',
            details={"justification": "Zoë's retrain; +2.1 pt", "metrics": {"accuracy": 0.931}},
            **move,
        ),
        audit.record(
            action="review.approved",
            actor=reviewer,
            meaning="Approved: promote sales_forecast v5 to Production",
            details={"comment": "metrics fine", "approvals": 1, "required": 2},
            **move,
        ),
    ]


def request_on_signing_stage(requester: User):
    """sales_forecast v5 filed for Production, a stage whose decisions must be signed."""
    production = stage("Production")
    production.signature_required = True
    production.save()
    sales = mirror_model(
        "sales_forecast",
        {3: {"current_stage": "Production"}, 5: {"current_stage": "Staging", "metrics": {"accuracy": 0.93}}},
    )
    return services.promotion_request_create(
        version=version(sales, 5), stage=production, requested_by=requester, justification="beats v3"
    )
