"""`/healthz`: is every part this product needs answering?"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from config.celery import app as celery_app
from promotions.models import WorkerHeartbeat
from registry_sync import gateway


def _database_state() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - the state is reported, not raised
        return f"error: {type(exc).__name__}: {exc}"
    return "ok"


def _broker_state() -> str:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # noqa: BLE001
        return f"error: {type(exc).__name__}: {exc}"
    return "ok"


def _registry_state() -> str:
    try:
        gateway.ping()
    except gateway.RegistryError as exc:
        return f"error: {exc}"
    return "ok"


def _worker_state() -> str:
    """Beat's heartbeat task, run by a worker, proves broker → worker → database end to end."""
    try:
        seen = WorkerHeartbeat.objects.filter(marker="beat").values_list("seen_at", flat=True).first()
    except Exception as exc:  # noqa: BLE001
        return f"error: {type(exc).__name__}: {exc}"
    if seen is None:
        return "never seen"
    age = timezone.now() - seen
    if age > timedelta(seconds=3 * settings.HEARTBEAT_INTERVAL_SECONDS):
        return f"stale: last heartbeat {int(age.total_seconds())} s ago"
    return "ok"


@login_not_required
@require_GET
@never_cache
def healthz(request):
    checks = {
        "database": _database_state(),
        "broker": _broker_state(),
        "mlflow": _registry_state(),
    }
    healthy = all(state == "ok" for state in checks.values())
    # Reported, not judged: the web answers while workers restart; monitoring alerts on it.
    checks["worker"] = _worker_state()
    return JsonResponse({"status": "ok" if healthy else "error", **checks}, status=200 if healthy else 503)
