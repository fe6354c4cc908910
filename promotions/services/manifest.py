"""The model's files a request is about: recorded by the worker after filing, checked at apply.

A request filed while PROMOTION_MANIFEST_CHECK is not `off` waits, `computing`, until the
worker has hashed every file of the version (`request_manifest_compute`, the task
`promotions.compute_manifest`). The manifest's digest then joins the evidence, so the evidence
digest every approval carries covers the bytes; before that no approval is accepted (and a stage
that needs none is approved only now). A manifest that cannot be made (no files, one missing, a
store that cannot be read) leaves the request unapprovable, with the reason on its page.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from common.redact import redact
from promotions import audit, outbox, policy
from promotions.models import ManifestState, PromotionRequest, Review
from promotions.selectors import files_summary
from promotions.services.evidence import evidence_digest
from promotions.services.lifecycle import ROW_LOCK, audit_context, request_approve_for_apply
from registry_sync import gateway

logger = logging.getLogger(__name__)
Status = PromotionRequest.Status
MANIFEST_TASK = "promotions.compute_manifest"
# A stage that needs no approval is approved by the worker once the files are recorded.
AUTOMATIC_REASON = "every check passed; no approval required"


class ManifestDeferred(Exception):
    """MLflow or its artifact store did not answer: the task tries again later."""


def manifest_required() -> bool:
    return settings.PROMOTION_MANIFEST_CHECK != "off"


def enqueue_manifest(request_id: int) -> bool:
    """Publish the manifest task. A broker failure is logged; the sweeper publishes it later."""
    if not outbox.publish(MANIFEST_TASK, [request_id]):
        return False
    PromotionRequest.objects.filter(pk=request_id).update(manifest_enqueued_at=timezone.now())
    return True


def manifests_sweep(*, now=None) -> list[int]:
    """Publish again the manifests of open requests that no worker has recorded for a while."""
    now = now or timezone.now()
    stuck_before = now - timedelta(seconds=settings.PROMOTION_STUCK_AFTER_SECONDS)
    waiting = PromotionRequest.objects.filter(
        Q(manifest_enqueued_at__isnull=True) | Q(manifest_enqueued_at__lt=stuck_before),
        status=Status.PENDING,
        manifest_state=ManifestState.COMPUTING,
    )
    pks = list(waiting.values_list("pk", flat=True)[: outbox.SWEEP_BATCH])
    for pk in pks:
        enqueue_manifest(pk)
    return pks


def request_manifest_compute(*, request_id: int) -> str:
    """Hash the request's model files and record them; returns what happened.

    Raises ManifestDeferred when MLflow or its store did not answer (the task retries; the
    reason is kept for the page meanwhile).
    """
    request = PromotionRequest.objects.select_related("version__model", "stage").get(pk=request_id)
    if request.manifest_state != ManifestState.COMPUTING or request.status != Status.PENDING:
        return f"skipped ({request.manifest_state or 'no manifest'}, {request.status})"
    name, number = request.version.model.name, request.version.version
    try:
        manifest = gateway.artifact_manifest(name, number, mode="full")
    except gateway.RegistryUnavailable as exc:
        # Kept for the page ("trying again: …"); updated_at moves its live panel.
        PromotionRequest.objects.filter(pk=request_id, manifest_state=ManifestState.COMPUTING).update(
            manifest_error=redact(str(exc))[:2000],
            manifest_error_detail=redact(exc.detail)[:4000],
            updated_at=timezone.now(),
        )
        raise ManifestDeferred(str(exc)) from None
    except gateway.RegistryError as exc:
        _manifest_failed(request, str(exc), exc.detail)
        return "failed"
    return _manifest_recorded(request, manifest)


def _manifest_failed(request: PromotionRequest, reason: str, detail: str) -> None:
    reason, detail = redact(reason), redact(detail)
    with transaction.atomic():
        changed = PromotionRequest.objects.filter(
            pk=request.pk, manifest_state=ManifestState.COMPUTING
        ).update(
            manifest_state=ManifestState.FAILED,
            manifest_error=reason[:2000],
            manifest_error_detail=detail[:4000],
            updated_at=timezone.now(),
        )
        if changed:
            audit.record(
                action="request.manifest_failed",
                meaning=f"Model files could not be recorded for request #{request.pk}: {reason}",
                details={"reason": reason},
                **audit_context(request),
            )


def _manifest_recorded(request: PromotionRequest, manifest: gateway.Manifest) -> str:
    now = timezone.now()
    artifacts = {"sha256": manifest.digest, "files": len(manifest.files), "bytes": manifest.total_bytes}
    with transaction.atomic():
        locked = (
            PromotionRequest.objects.select_for_update(**ROW_LOCK)
            .select_related("version__model", "stage")
            .get(pk=request.pk)
        )
        if locked.manifest_state != ManifestState.COMPUTING or locked.status != Status.PENDING:
            return "skipped (decided meanwhile)"
        evidence = {**locked.evidence, "artifacts": artifacts}
        digest = evidence_digest(evidence)
        PromotionRequest.objects.filter(pk=locked.pk).update(
            manifest_state=ManifestState.READY,
            manifest={
                "files": [[item.path, item.size, item.sha256] for item in manifest.files],
                "sha256": manifest.digest,
                "bytes": manifest.total_bytes,
                "computed_at": audit.utc_iso(now),
            },
            manifest_error="",
            manifest_error_detail="",
            evidence=evidence,
            evidence_sha256=digest,
            # Moves the page's live panel, which then shows the files.
            updated_at=now,
        )
        # No approval is accepted while computing; one given before this existed did not see
        # the bytes, so it must be given again.
        stale = Review.objects.filter(request=locked, stale=False, decision=Review.Decision.APPROVE).update(
            stale=True, stale_reason="The model files' digest was added to the evidence"
        )
        audit.record(
            action="request.manifest_recorded",
            meaning=f"Model files recorded for request #{locked.pk}: "
            + files_summary(files=artifacts["files"], size=artifacts["bytes"], sha256=manifest.digest),
            details={
                "artifact_sha256": manifest.digest,
                "files": artifacts["files"],
                "bytes": artifacts["bytes"],
                "old_evidence_sha256": locked.evidence_sha256,
                "evidence_sha256": digest,
                "stale_reviews": stale,
            },
            **audit_context(locked),
        )
        if policy.required_approvals(locked) == 0 and not policy.failing(locked.check_results):
            request_approve_for_apply(locked, actor=None, reason=AUTOMATIC_REASON)
    return "recorded"


def _short(sha256: str | None) -> str:
    return f"{sha256[:12]}…" if sha256 else "?"


def manifest_changes(recorded: list[list], found: tuple[gateway.ManifestFile, ...]) -> list[str]:
    """What differs between the files recorded at filing and the files found now, one phrase a
    file: "model.pkl (sha256 ab12… → cd34…)", "(size 10 → 12 bytes)", "(added)", "(removed)".

    A file found without a hash (a large file in a quick check) is compared by size alone.
    """
    before = {path: (size, sha256) for path, size, sha256 in recorded}
    now = {item.path: (item.size, item.sha256) for item in found}
    changes = []
    for path in sorted(before.keys() | now.keys()):
        if path not in now:
            changes.append(f"{path} (removed)")
        elif path not in before:
            changes.append(f"{path} (added)")
        else:
            (old_size, old_sha), (new_size, new_sha) = before[path], now[path]
            if new_sha is not None and new_sha != old_sha:
                changes.append(f"{path} (sha256 {_short(old_sha)} → {_short(new_sha)})")
            elif new_size != old_size:
                changes.append(f"{path} (size {old_size:,} → {new_size:,} bytes)")
    return changes
