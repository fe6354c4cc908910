"""Celery tasks: thin wrappers that call a service with primary keys."""

from __future__ import annotations

import logging
import socket
from datetime import datetime

from celery import shared_task
from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from promotions import audit, services
from promotions.errors import TransientApplyError
from promotions.models import WorkerHeartbeat
from promotions.services import emergency, enforcement, escalation, manifest, scheduling
from promotions.services.lifecycle import APPLY_TASK

logger = logging.getLogger(__name__)


@shared_task(name="promotions.record_heartbeat")
def record_heartbeat(marker: str) -> None:
    """Prove a worker is consuming: the row it writes is what /healthz and tests look for."""
    WorkerHeartbeat.objects.update_or_create(
        marker=marker, defaults={"worker": socket.gethostname(), "seen_at": timezone.now()}
    )


@shared_task(
    bind=True,
    name=APPLY_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,  # the attempt count that bounds retries lives in the database
)
def apply_promotion(self, request_id: int) -> str:
    try:
        outcome = services.promotion_apply(request_id=request_id)
    except TransientApplyError as exc:
        delay = services.retry_delay(exc.attempts)
        logger.warning("Request #%s: MLflow unavailable (%s); retry in %.1f s", request_id, exc, delay)
        services.apply_retry_scheduled(request_id=request_id, delay=delay)
        raise self.retry(countdown=delay, exc=exc) from None
    if outcome == "applied":
        # A promote-through request files its next step now that this one is in MLflow.
        services.pipeline_continue(request_id=request_id)
    return outcome


@shared_task(
    bind=True,
    name=manifest.MANIFEST_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,  # bounded below by the attempt count; the sweeper publishes it again later
)
def compute_manifest(self, request_id: int) -> str:
    try:
        return manifest.request_manifest_compute(request_id=request_id)
    except manifest.ManifestDeferred as exc:
        if self.request.retries + 1 >= settings.PROMOTION_MAX_ATTEMPTS:
            logger.warning("Request #%s: model files not recorded (%s); left to the sweeper", request_id, exc)
            return "deferred"
        delay = services.retry_delay(self.request.retries + 1)
        logger.warning("Request #%s: model files not recorded (%s); retry in %.1f s", request_id, exc, delay)
        raise self.retry(countdown=delay, exc=exc) from None


@shared_task(
    bind=True,
    name=enforcement.REVERT_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,  # the revert's row bounds its attempts (PROMOTION_MAX_ATTEMPTS)
)
def revert_drift(self, revert_id: int) -> str:
    try:
        return enforcement.drift_revert(revert_id=revert_id)
    except enforcement.RevertDeferred as exc:
        logger.warning("Revert #%s waits (%s); retry in %.1f s", revert_id, exc, exc.delay)
        raise self.retry(countdown=exc.delay, exc=exc) from None


@shared_task(name="promotions.sweep_requests")
def sweep_requests() -> int:
    # The reverts of drift ride on the same beat entry: their lost publishes are swept here too.
    enforcement.reverts_sweep()
    # So do the manifests of filed requests whose task was lost (a broker outage at filing).
    manifest.manifests_sweep()
    return len(services.requests_sweep())


@shared_task(name="promotions.expire_requests")
def expire_requests() -> int:
    return services.requests_expire()


def _clock(now: str | None) -> datetime | None:
    """A beat task's `now`: an ISO 8601 time with its offset, standing in for the worker's clock
    (how a test moves time for a real worker); None, as the beat sends, is the clock itself."""
    if not now:
        return None
    moment = parse_datetime(now)
    if moment is None or timezone.is_naive(moment):
        raise ValueError(f"now must be an ISO 8601 time with an offset, not {now[:40]!r}")
    return moment


@shared_task(name="promotions.release_scheduled")
def release_scheduled(now: str | None = None) -> list[int]:
    """Release the scheduled requests whose window opened."""
    return scheduling.scheduled_release(now=_clock(now))


@shared_task(name="promotions.escalate_requests")
def escalate_requests(now: str | None = None) -> int:
    """Tell the stage admins of requests waiting too long."""
    return escalation.requests_escalate(now=_clock(now))


@shared_task(name="promotions.seal_audit_log")
def seal_audit_log() -> int | None:
    """Seal the audit chain head under AUDIT_SIGNING_KEY (nothing without one)."""
    sealed = audit.seal()
    return sealed.sequence if sealed is not None else None


@shared_task(name="promotions.verify_audit_log")
def verify_audit_log() -> bool:
    """Walk the whole chain; record a passed walk (a broken chain is logged, never recorded)."""
    report = audit.verify_database(parallel=False)
    if not report.ok:
        logger.error("The audit log does not verify at #%s: %s", report.first_bad_sequence, report.reason)
        return False
    audit.record_verification(report)
    return True


@shared_task(name=emergency.REMIND_TASK)
def remind_retrospective_reviews(now: str | None = None) -> list[int]:
    """Remind the overdue retrospective reviews."""
    return services.retrospective_reviews_remind(now=_clock(now))
