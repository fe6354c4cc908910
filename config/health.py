"""`/healthz`: is every part this product needs answering?

Anyone may ask whether the service is healthy (a load balancer, an uptime probe); only staff or
a caller holding `HEALTHZ_TOKEN` learn which part is down and why, since an error text describes
the infrastructure behind the product. One round of checks serves all callers for
`HEALTHZ_CACHE_SECONDS`, so a flood of probes cannot become a flood of broker connections and
MLflow calls.
"""

from __future__ import annotations

import hmac
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from common.redact import redact
from config.celery import app as celery_app
from promotions.models import WorkerHeartbeat
from registry_sync import gateway

CACHE_KEY = "healthz:checks"
# These decide 200 or 503; the worker heartbeat is reported beside them (see `_checks`).
JUDGED = ("database", "broker", "mlflow")


def _failure(exc: Exception) -> str:
    return redact(f"error: {type(exc).__name__}: {exc}")


def _database_state() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - the state is reported, not raised
        return _failure(exc)
    return "ok"


def _broker_state() -> str:
    """Connect, open a channel and declare the default queue, on every transport.

    Connecting alone proves nothing for kombu's SQLAlchemy transport, which opens its database
    only when a channel first touches a queue. Declaring the queue the workers consume is
    idempotent and exactly what publishing does anyway.
    """
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
            queue = celery_app.amqp.queues[celery_app.conf.task_default_queue]
            queue.bind(conn.default_channel).declare()
    except Exception as exc:  # noqa: BLE001
        return _failure(exc)
    return "ok"


def _registry_state() -> str:
    try:
        gateway.ping()
    except gateway.RegistryError as exc:
        return redact(f"error: {exc}")
    return "ok"


def _worker_state() -> str:
    """Beat's heartbeat task, run by a worker, proves broker → worker → database end to end."""
    try:
        seen = WorkerHeartbeat.objects.filter(marker="beat").values_list("seen_at", flat=True).first()
    except Exception as exc:  # noqa: BLE001
        return _failure(exc)
    if seen is None:
        return "never seen"
    age = timezone.now() - seen
    if age > timedelta(seconds=3 * settings.HEARTBEAT_INTERVAL_SECONDS):
        return f"stale: last heartbeat {int(age.total_seconds())} s ago"
    return "ok"


def _checks() -> dict[str, str]:
    checks = cache.get(CACHE_KEY)
    if checks is None:
        checks = {
            "database": _database_state(),
            "broker": _broker_state(),
            "mlflow": _registry_state(),
            # Reported, not judged: the web answers while workers restart; monitoring alerts on it.
            "worker": _worker_state(),
        }
        if settings.HEALTHZ_CACHE_SECONDS:
            cache.set(CACHE_KEY, checks, timeout=settings.HEALTHZ_CACHE_SECONDS)
    return checks


def _may_see_details(request: HttpRequest) -> bool:
    if request.user.is_authenticated and request.user.is_staff:
        return True
    token = settings.HEALTHZ_TOKEN
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    if not token or scheme.lower() != "bearer" or not offered:
        return False
    return hmac.compare_digest(offered.strip().encode(), token.encode())


@login_not_required
@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    checks = _checks()
    healthy = all(checks[name] == "ok" for name in JUDGED)
    body = {"status": "ok" if healthy else "degraded"}
    if _may_see_details(request):
        body.update(checks)
    return JsonResponse(body, status=200 if healthy else 503)
