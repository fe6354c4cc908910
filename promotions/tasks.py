"""Celery tasks: thin wrappers that call a service with primary keys."""

from __future__ import annotations

import socket

from celery import shared_task
from django.utils import timezone

from promotions.models import WorkerHeartbeat


@shared_task(name="promotions.record_heartbeat")
def record_heartbeat(marker: str) -> None:
    """Prove a worker is consuming: the row it writes is what /healthz and tests look for."""
    WorkerHeartbeat.objects.update_or_create(
        marker=marker, defaults={"worker": socket.gethostname(), "seen_at": timezone.now()}
    )
