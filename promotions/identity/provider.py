"""The OpenID Connect provider's discovery document, fetched on first use and kept for an hour."""

from __future__ import annotations

import threading
import time

import requests
from django.conf import settings

DISCOVERY_TTL_SECONDS = 3600

_lock = threading.Lock()
_cache: dict[str, tuple[float, dict]] = {}


class ProviderUnavailable(Exception):
    """The provider did not answer, or answered with something that is not its discovery."""


def discovery() -> dict:
    issuer = settings.OIDC_ISSUER
    with _lock:
        cached = _cache.get(issuer)
        if cached is not None and time.monotonic() - cached[0] < DISCOVERY_TTL_SECONDS:
            return cached[1]
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderUnavailable(f"{issuer} is not answering ({type(exc).__name__})") from None
    if not isinstance(document, dict) or document.get("issuer", "").rstrip("/") != issuer:
        # The issuer the tokens must carry is the one configured, never one the document claims.
        raise ProviderUnavailable(f"{issuer} sent a discovery document for another issuer")
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(document.get(key), str):
            raise ProviderUnavailable(f"{issuer}'s discovery document has no {key}")
    with _lock:
        _cache[issuer] = (time.monotonic(), document)
    return document


def endpoint(name: str) -> str:
    return discovery().get(name) or ""


def forget() -> None:
    """Fetch the document again on next use (tests; a provider that moved its endpoints)."""
    with _lock:
        _cache.clear()
