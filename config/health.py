"""`/healthz`: is every part this product needs answering?"""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from config.celery import app as celery_app


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
    from registry_sync import gateway

    try:
        gateway.ping()
    except gateway.RegistryError as exc:
        return f"error: {exc}"
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
    return JsonResponse({"status": "ok" if healthy else "error", **checks}, status=200 if healthy else 503)
