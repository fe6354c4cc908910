"""The evidence a reviewer approves: a snapshot of the version and of the target's holder.

Its SHA-256 is stored on the request and on every approval; when a sync shows the evidence
moved, pending requests are re-snapshotted and their approvals go stale.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.db import transaction
from django.utils import timezone

from promotions import audit, catalog, policy
from promotions.models import PromotionRequest, Review, Stage
from promotions.services.lifecycle import audit_context
from registry_sync.models import ModelVersion

Status = PromotionRequest.Status


def evidence_digest(value: Any) -> str:
    return hashlib.sha256(audit.canonical_json(value).encode()).hexdigest()


def build_evidence(
    *, version: ModelVersion, stage: Stage, ci_evidence: dict | None, rollback: bool = False
) -> dict:
    holder = catalog.current_holder(stage, version.model, exclude_version=version.version)
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
        if "artifacts" in request.evidence:
            # The model's files do not change with the registry's metadata: the recorded
            # manifest stays part of what reviewers approve.
            evidence["artifacts"] = request.evidence["artifacts"]
        digest = evidence_digest(evidence)
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
                checks_blocked=bool(policy.failing(evidence["checks"])),
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
                **audit_context(request),
            )
        refreshed += 1
    return refreshed
