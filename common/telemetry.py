"""Counters and histograms of what happens, counted where it happens (Prometheus).

Each process (gunicorn's workers, Celery's pool processes) counts its own; with
`PROMETHEUS_MULTIPROC_DIR` set (config/settings.py puts it in the environment before anything
imports prometheus_client) each writes its figures to files there and `/metrics` adds them up.
Figures read from the database at scrape time (requests by status, backlogs, ages) are not here:
see promotions/observability/state.py.

It lives in `common`, below every app, because the apply (promotions) and the sync
(registry_sync) both count, and a lower app must not import an upper one.

Every label value here comes from a fixed set (a failure cause, a sync trigger) or from the
stage catalog, which stage admins keep short; never from MLflow or a request's free text.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Seconds: from a minute to a month, for waits on people.
_PEOPLE_BUCKETS = (60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400, 30 * 86400)
# Seconds: from a tenth of a second to an hour, for work of machines that may queue or retry.
_MACHINE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# Why an apply failed for good; `cause` of promotions.services.applying._fail.
FAILURE_CAUSES = (
    "attempts_exhausted",
    "registry_unavailable",
    "permission_denied",
    "version_missing",
    "registry_rejected",
    "precondition",
)

APPLY_ATTEMPTS = Counter(
    "promotions_apply_attempts",
    "Apply attempts started (a request claimed by a worker, a take-over included).",
)
APPLY_RETRIES = Counter(
    "promotions_apply_retries",
    "Apply attempts that met MLflow not answering and were put back for a later retry.",
)
APPLY_FAILURES = Counter(
    "promotions_apply_failures",
    "Requests that failed for good, by cause.",
    ["reason"],
)
APPLY_TAKEOVERS = Counter(
    "promotions_apply_takeovers",
    "Applying requests taken over from an attempt whose lease had expired (a worker died or hung).",
)
SWEEPER_REQUEUED = Counter(
    "promotions_sweeper_requeued",
    "Requests the sweeper published again (approved and never picked up, or applying with an expired lease).",
)
APPROVAL_LEAD_TIME = Histogram(
    "promotions_approval_lead_time_seconds",
    "From filing to the approval that made a request approved, by target stage.",
    ["stage"],
    buckets=_PEOPLE_BUCKETS,
)
APPROVAL_TO_APPLIED = Histogram(
    "promotions_approval_to_applied_seconds",
    "From approval to applied in MLflow, by target stage.",
    ["stage"],
    buckets=_MACHINE_BUCKETS,
)
SYNC_DURATION = Histogram(
    "registry_sync_duration_seconds",
    "How long a sync of the registry mirror took, by trigger and outcome (ok, failed).",
    ["trigger", "outcome"],
    buckets=_MACHINE_BUCKETS,
)
