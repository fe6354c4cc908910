from __future__ import annotations

from datetime import UTC, datetime

from django import template

register = template.Library()


@register.filter
def ms_datetime(value: int | None) -> datetime | None:
    """MLflow's millisecond timestamps as aware datetimes."""
    if value in (None, ""):
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


@register.filter
def get_item(mapping, key):
    if not isinstance(mapping, dict):
        return None
    return mapping.get(key)


@register.filter
def number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
