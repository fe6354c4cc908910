"""Failed sign-ins and lockouts go to the audit log (connected in PromotionsConfig.ready)."""

from __future__ import annotations

from promotions import audit


def _address(request) -> str:
    return (request.META.get("REMOTE_ADDR", "") if request is not None else "")[:64]


def on_login_failed(sender, credentials=None, request=None, **kwargs) -> None:
    username = str((credentials or {}).get("username", ""))[:150]
    audit.record(
        action="auth.login_failed",
        meaning=f"Failed sign-in for '{username}'",
        details={"username": username, "ip_address": _address(request)},
    )


def on_locked_out(sender, request=None, username=None, ip_address=None, **kwargs) -> None:
    audit.record(
        action="auth.locked_out",
        meaning=f"Locked out '{username}' after repeated failed sign-ins",
        details={"username": str(username or "")[:150], "ip_address": str(ip_address or "")[:64]},
    )
