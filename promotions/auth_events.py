"""Failed sign-ins and lockouts go to the audit log, bounded (connected in PromotionsConfig.ready).

Also the one answer to "which address is this client": behind `TRUSTED_PROXY_COUNT` proxies it
is the address the outermost of them saw, so one client cannot pose as another (and lock every
reviewer out by sharing the proxy's address).
"""

from __future__ import annotations

import ipaddress

from django.conf import settings

from promotions.services import sign_in


def client_address(request) -> str:
    """The client's address: REMOTE_ADDR, or with trusted proxies in front, the entry of
    X-Forwarded-For that the outermost trusted proxy appended (entries further left are the
    client's own word and prove nothing)."""
    if request is None:
        return ""
    address = request.META.get("REMOTE_ADDR", "")
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        forwarded = [part for part in forwarded if part]
        if len(forwarded) >= proxies:
            address = forwarded[-proxies]
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return ""


def _address(request) -> str:
    return (getattr(request, "axes_ip_address", None) or client_address(request))[:64]


def on_login_failed(sender, credentials=None, request=None, **kwargs) -> None:
    username = str((credentials or {}).get("username", ""))[:150]
    sign_in.sign_in_failure_record(username=username, ip_address=_address(request))


def on_locked_out(sender, request=None, username=None, ip_address=None, **kwargs) -> None:
    sign_in.sign_in_lockout_record(
        username=str(username or "")[:150], ip_address=str(ip_address or _address(request))[:64]
    )
