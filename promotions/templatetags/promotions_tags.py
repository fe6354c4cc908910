from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def get_count(counts: dict, key: str) -> int:
    return counts.get(key, 0) if isinstance(counts, dict) else 0


@register.filter
def signed(value) -> str:
    if not isinstance(value, int | float):
        return ""
    text = f"{value:+.4g}"
    return text.replace("-", "−")


@register.filter
def metric(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)
