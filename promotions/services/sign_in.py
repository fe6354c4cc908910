"""Failed sign-ins and lock-outs on the record, bounded.

Per user name and address, the audit log gets the first failure of each cool-off window and
one lock-out entry; the failures between are counted in SignInFailureTally. One address trying
many user names is recorded for the first few names, then under one "many names" tally.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from promotions import audit
from promotions.models import SignInFailureTally

MANY_NAMES = "*"


def _window() -> timedelta:
    return timedelta(hours=settings.AXES_COOLOFF_TIME)


def _tally(username: str, ip_address: str) -> tuple[SignInFailureTally, int | None]:
    """Count one failure; return the tally and, when a new window began, the old window's count."""
    now = timezone.now()
    for _ in range(2):  # a concurrent first failure may create the row between our two queries
        with transaction.atomic():
            tally = (
                SignInFailureTally.objects.select_for_update()
                .filter(username=username, ip_address=ip_address)
                .first()
            )
            if tally is None:
                try:
                    with transaction.atomic():
                        tally = SignInFailureTally.objects.create(
                            username=username, ip_address=ip_address, window_started_at=now, failures=1
                        )
                except IntegrityError:
                    continue
                return tally, 0
            if now - tally.window_started_at > _window():
                previous = tally.failures
                SignInFailureTally.objects.filter(pk=tally.pk).update(
                    window_started_at=now, failures=1, locked_out_recorded=False
                )
                tally.refresh_from_db()
                return tally, previous
            SignInFailureTally.objects.filter(pk=tally.pk).update(failures=F("failures") + 1)
            tally.refresh_from_db()
            return tally, None
    raise RuntimeError("sign-in tally kept changing under us")  # pragma: no cover - two races in a row


def _name_for(username: str, ip_address: str) -> str:
    """The user name itself, or the shared bucket once an address has tried many names."""
    if SignInFailureTally.objects.filter(username=username, ip_address=ip_address).exists():
        return username
    recent = timezone.now() - _window()
    names = SignInFailureTally.objects.filter(ip_address=ip_address, window_started_at__gte=recent).count()
    return MANY_NAMES if names >= settings.SIGN_IN_AUDIT_NAMES_PER_ADDRESS else username


def sign_in_failure_record(*, username: str, ip_address: str) -> None:
    name = _name_for(username, ip_address)
    tally, previous = _tally(name, ip_address)
    if previous is None:
        return
    if name == MANY_NAMES:
        meaning = f"Failed sign-ins for more than {settings.SIGN_IN_AUDIT_NAMES_PER_ADDRESS} user names"
    else:
        meaning = f"Failed sign-in for '{username}'"
    details = {
        "username": name,
        "ip_address": ip_address,
        "window_minutes": int(_window().total_seconds() // 60),
    }
    if previous:
        details["failures_in_previous_window"] = previous
    audit.record(action="auth.login_failed", meaning=meaning + " (further failures counted)", details=details)


def sign_in_lockout_record(*, username: str, ip_address: str) -> None:
    """Once per window: axes announces the lock-out again on every refused attempt."""
    changed = SignInFailureTally.objects.filter(
        username=username, ip_address=ip_address, locked_out_recorded=False
    ).update(locked_out_recorded=True)
    tally = SignInFailureTally.objects.filter(username=username, ip_address=ip_address).first()
    if tally is not None and not changed:
        return
    audit.record(
        action="auth.locked_out",
        meaning=f"Locked out '{username}' after repeated failed sign-ins",
        details={
            "username": username,
            "ip_address": ip_address,
            # Axes announces the lock-out before the failure that caused it reaches the tally.
            "earlier_failures": tally.failures if tally is not None else 0,
        },
    )
