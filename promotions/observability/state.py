"""Figures read from the database at scrape time, by a custom collector.

What the database already knows (requests by status, backlogs, the time of the last sync) is
read when Prometheus asks rather than counted as it happens: it is right after a restart, the
same from every process, and costs a fixed number of aggregate queries (twelve; pinned in
tests/test_metrics_endpoint.py), whatever the size of the tables.

An age of something that never happened is +Inf, so an alert on "older than" fires for it too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, Max, Min, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.redact import redact
from promotions.audit import AuditAction
from promotions.models import (
    AuditChainHead,
    AuditEvent,
    DriftRevert,
    OutboundDelivery,
    OutboundEmail,
    PromotionRequest,
    Stage,
    WorkerHeartbeat,
)
from promotions.services.applying import abandoned_applies
from registry_sync.models import DriftEvent, SyncRun

logger = logging.getLogger(__name__)
Status = PromotionRequest.Status
OTHER_MODELS = "other"
DELIVERY_BACKLOG = (OutboundDelivery.Status.PENDING, OutboundDelivery.Status.RETRYING)
EMAIL_BACKLOG = (OutboundEmail.Status.PENDING, OutboundEmail.Status.SENDING)


def _age(now: datetime, moment: datetime | None) -> float:
    return math.inf if moment is None else max((now - moment).total_seconds(), 0.0)


class DatabaseStateCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "promotions_metrics_database_up", "1 when the figures read from the database could be read."
        )
        try:
            figures = list(self._figures(timezone.now()))
        except DatabaseError as exc:
            logger.warning("Metrics: the database could not be read: %s", redact(str(exc)))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from figures

    def _figures(self, now: datetime) -> Iterator[Metric]:
        yield from self._requests(now)
        yield from self._outbound(now)
        yield from self._audit(now)
        yield from self._registry(now)
        heartbeat = GaugeMetricFamily(
            "promotions_worker_heartbeat_age_seconds",
            "Seconds since a worker last ran the beat's heartbeat task, by marker.",
            labels=["marker"],
        )
        for marker, seen_at in WorkerHeartbeat.objects.values_list("marker", "seen_at").order_by("marker"):
            heartbeat.add_metric([marker], _age(now, seen_at))
        yield heartbeat

    def _requests(self, now: datetime) -> Iterator[Metric]:
        by_state = GaugeMetricFamily(
            "promotions_requests",
            "Promotion requests by status and target stage.",
            labels=["status", "stage"],
        )
        counts = {
            (row["status"], row["stage__name"]): row["n"]
            for row in PromotionRequest.objects.values("status", "stage__name")
            .annotate(n=Count("id"))
            .order_by()
        }
        stages = list(Stage.objects.order_by("position", "name").values_list("name", flat=True))
        for stage in stages + sorted({name for _, name in counts} - set(stages)):
            for status in Status.values:
                by_state.add_metric([status, stage], counts.get((status, stage), 0))
        yield by_state

        open_total = sum(n for (status, _), n in counts.items() if status in PromotionRequest.OPEN_STATUSES)
        by_model = GaugeMetricFamily(
            "promotions_open_requests_by_model",
            "Open requests (pending, approved, scheduled, applying) by model; past "
            'METRICS_MODEL_LABEL_CAP models, the rest under model="other".',
            labels=["model"],
        )
        cap = settings.METRICS_MODEL_LABEL_CAP
        top = (
            list(
                PromotionRequest.objects.filter(status__in=PromotionRequest.OPEN_STATUSES)
                .values_list("version__model__name")
                .annotate(n=Count("id"))
                .order_by("-n", "version__model__name")[:cap]
            )
            if cap
            else []
        )
        for name, n in top:
            by_model.add_metric([name], n)
        rest = open_total - sum(n for _, n in top)
        if rest > 0:
            by_model.add_metric([OTHER_MODELS], rest)
        yield by_model

        applying = PromotionRequest.objects.aggregate(
            abandoned=Count("id", filter=abandoned_applies(now)),
            oldest_waiting=Min("decided_at", filter=Q(status=Status.APPROVED)),
        )
        yield GaugeMetricFamily(
            "promotions_applies_abandoned",
            "Applying requests whose attempt stopped renewing its lease (waiting for a take-over).",
            value=applying["abandoned"],
        )
        yield GaugeMetricFamily(
            "promotions_oldest_approved_age_seconds",
            "Seconds since the oldest request now approved (not yet applying) was approved; 0 when none.",
            value=0.0 if applying["oldest_waiting"] is None else _age(now, applying["oldest_waiting"]),
        )

    def _outbound(self, now: datetime) -> Iterator[Metric]:
        for model, noun, backlog_statuses in (
            (OutboundDelivery, "deliveries", DELIVERY_BACKLOG),
            (OutboundEmail, "emails", EMAIL_BACKLOG),
        ):
            rows = {
                row["status"]: row
                for row in model.objects.values("status")
                .annotate(n=Count("id"), oldest=Min("created_at"))
                .order_by()
            }
            by_status = GaugeMetricFamily(
                f"promotions_outbound_{noun}", f"Outbound {noun} by status.", labels=["status"]
            )
            for status in model.Status.values:
                by_status.add_metric([status], rows.get(status, {}).get("n", 0))
            yield by_status
            waiting = [rows[status] for status in backlog_statuses if status in rows]
            yield GaugeMetricFamily(
                f"promotions_outbound_{noun}_backlog",
                f"Outbound {noun} not yet sent ({', '.join(backlog_statuses)}).",
                value=sum(row["n"] for row in waiting),
            )
            oldest = min((row["oldest"] for row in waiting), default=None)
            yield GaugeMetricFamily(
                f"promotions_outbound_{noun}_backlog_age_seconds",
                f"Seconds since the oldest outbound {noun[:-1]} not yet sent was recorded; 0 when none.",
                value=0.0 if oldest is None else _age(now, oldest),
            )

    def _audit(self, now: datetime) -> Iterator[Metric]:
        head = AuditChainHead.objects.values_list("last_sequence", flat=True).first()
        yield GaugeMetricFamily(
            "promotions_audit_entries",
            "Entries in the audit log (the chain head's sequence).",
            value=head or 0,
        )
        verified = AuditEvent.objects.filter(action=AuditAction.AUDIT_VERIFIED).aggregate(
            at=Max("created_at")
        )
        yield GaugeMetricFamily(
            "promotions_audit_verification_age_seconds",
            "Seconds since `manage.py verify_audit_log` last verified the whole chain; +Inf if never.",
            value=_age(now, verified["at"]),
        )

    def _registry(self, now: datetime) -> Iterator[Metric]:
        synced = SyncRun.objects.filter(finished_at__isnull=False, error="").aggregate(at=Max("finished_at"))
        yield GaugeMetricFamily(
            "registry_sync_last_success_age_seconds",
            "Seconds since a sync of the registry mirror last finished without error; +Inf if never.",
            value=_age(now, synced["at"]),
        )
        drift = GaugeMetricFamily(
            "registry_drift_events",
            "Changes seen in MLflow that no promotion made, by whether they are resolved.",
            labels=["resolved"],
        )
        counts = dict(DriftEvent.objects.values_list("resolved").annotate(n=Count("id")).order_by())
        for resolved in (False, True):
            drift.add_metric([str(resolved).lower()], counts.get(resolved, 0))
        yield drift
        reverts = GaugeMetricFamily(
            "promotions_drift_reverts", "What the workflow did about drift, by status.", labels=["status"]
        )
        counts = dict(DriftRevert.objects.values_list("status").annotate(n=Count("id")).order_by())
        for status in DriftRevert.Status.values:
            reverts.add_metric([status], counts.get(status, 0))
        yield reverts
