"""`GET /metrics`: Prometheus text format, for a scraper holding the token or calling from an
allowed network; nothing at all for anyone else.

Refusals carry one fixed sentence per status: they say neither what is configured nor what was
wrong with the token.
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from promotions.auth_events import client_address
from promotions.observability.state import DatabaseStateCollector


def _from_allowed_network(request: HttpRequest) -> bool:
    if not settings.METRICS_ALLOWED_NETWORKS:
        return False
    address = client_address(request)
    if not address:
        return False
    client = ipaddress.ip_address(address)
    return any(client in network for network in settings.METRICS_ALLOWED_NETWORKS)


def _offered_token(request: HttpRequest) -> str:
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    return offered.strip() if scheme.lower() == "bearer" else ""


# The whole of what a refused caller learns.
REFUSALS = {
    401: b"Authorization required.\n",
    403: b"Forbidden.\n",
    404: b"Not found.\n",
}


def _refused(status: int) -> HttpResponse:
    return HttpResponse(REFUSALS[status], status=status, content_type="text/plain; charset=utf-8")


def _unauthorized() -> HttpResponse:
    response = _refused(401)
    response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the caller may read the metrics, else the answer for them."""
    token = settings.METRICS_TOKEN
    if not token and not settings.METRICS_ALLOWED_NETWORKS:
        return _refused(404)
    offered = _offered_token(request)
    if token and offered:
        # A wrong token is refused even from an allowed network: that caller got something wrong.
        return None if hmac.compare_digest(offered.encode(), token.encode()) else _unauthorized()
    if _from_allowed_network(request):
        return None
    if token:
        return _unauthorized()
    return _refused(403)


def _events_registry() -> CollectorRegistry:
    """The counters of every process (multiprocess mode), or of this one alone."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry(auto_describe=True)
    MultiProcessCollector(registry)
    return registry


def _state_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseStateCollector())
    return registry


@login_not_required
@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    body = generate_latest(_events_registry()) + generate_latest(_state_registry())
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
