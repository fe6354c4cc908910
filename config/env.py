"""Strict readers for configuration from the environment.

Each helper refuses a bad value with ImproperlyConfigured naming the variable, so a typo in
a deployment stops start-up with one clear line instead of a confusing failure later.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use true or false.")


def envint(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}.")
    return value


def envstr(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def envchoice(name: str, default: str, *, choices: tuple[str, ...]) -> str:
    """One of `choices` (case-insensitive); anything else stops start-up."""
    value = envstr(name, default).lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of: {', '.join(choices)}.")
    return value


def envlist(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def envurl(name: str, default: str, *, schemes: tuple[str, ...]) -> str:
    """A URL whose scheme is one of `schemes`; anything else stops start-up."""
    value = envstr(name, default)
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} is not a valid URL: {exc}.") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise ImproperlyConfigured(
            f"{name}={value!r} has an unsupported scheme {scheme or '(none)'!r}; "
            f"expected one of: {', '.join(schemes)}."
        )
    if scheme.startswith("http") and not parts.hostname:
        raise ImproperlyConfigured(f"{name}={value!r} has no host name.")
    try:
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} has a port that is not a number.") from None
    return value


def envnetworks(name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A comma list of networks in CIDR notation (a bare address is a network of one); anything
    else stops start-up."""
    networks = []
    for item in envlist(name, []):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {item!r} is not a network (e.g. 10.0.0.0/8).") from None
    return tuple(networks)
