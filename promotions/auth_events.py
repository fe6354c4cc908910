"""Failed sign-ins and lockouts go to the audit log, bounded (connected in PromotionsConfig.ready).

Also the one answer to "which address is this client": behind `TRUSTED_PROXY_COUNT` proxies it
is the address the outermost of them saw, so one client cannot pose as another (and lock every
reviewer out by sharing the proxy's address).
"""

from __future__ import annotations

import ipaddress

from django.conf import settings

from promotions import audit
from promotions.services import people, sign_in


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


def is_company_sign_in(request, credentials: dict | None) -> bool:
    """An OpenID Connect callback (its credentials carry a nonce, never a user name): django-axes
    neither counts nor locks it; every refused one is audited as `auth.oidc_refused`."""
    credentials = credentials or {}
    return "nonce" in credentials and "username" not in credentials


def _address(request) -> str:
    return (getattr(request, "axes_ip_address", None) or client_address(request))[:64]


def on_login_failed(sender, credentials=None, request=None, **kwargs) -> None:
    if "nonce" in (credentials or {}):
        return  # a refused company sign-in: its own auth.oidc_refused entry says why
    username = str((credentials or {}).get("username", ""))[:150]
    sign_in.sign_in_failure_record(username=username, ip_address=_address(request))


def on_locked_out(sender, request=None, username=None, ip_address=None, **kwargs) -> None:
    sign_in.sign_in_lockout_record(
        username=str(username or "")[:150], ip_address=str(ip_address or _address(request))[:64]
    )


# --- roles and accounts -----------------------------------------------------------------------


def on_groups_changed(sender, instance, action, reverse, model, pk_set, **kwargs) -> None:
    """User ↔ group membership changed (from either side, by any path): put it on the record."""
    if action == "pre_clear":
        # After the clear nothing says what was there: remember it now.
        instance._groups_cleared = list(
            instance.user_set.all() if reverse else instance.groups.all()  # noqa: SLF001
        )
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    others = (
        getattr(instance, "_groups_cleared", [])
        if action == "post_clear"
        else list(model.objects.filter(pk__in=pk_set or ()))
    )
    added = action == "post_add"
    for other in others:
        user, group = (other, instance) if reverse else (instance, other)
        people.user_group_changed(user=user, group=group, added=added, actor=audit.current_user())


def remember_activation(sender, instance, update_fields=None, **kwargs) -> None:
    if instance.pk is None or (update_fields is not None and "is_active" not in update_fields):
        return
    instance._was_active = sender.objects.filter(pk=instance.pk).values_list("is_active", flat=True).first()


def on_user_saved(sender, instance, created, **kwargs) -> None:
    was = getattr(instance, "_was_active", None)
    if created or was is None or was == instance.is_active:
        return
    instance._was_active = instance.is_active
    people.user_activation_changed(user=instance, active=instance.is_active, actor=audit.current_user())
