from __future__ import annotations

from django import template
from django.utils.html import format_html

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


_STATUS_WORDS = {
    "pending": "Pending",
    "approved": "Approved",
    "applying": "Applying",
    "applied": "Applied",
    "failed": "Failed",
    "rejected": "Rejected",
    "cancelled": "Cancelled",
    "expired": "Expired",
}


@register.filter
def status_badge(status: str):
    """The status as a word and a colour (never colour alone)."""
    return format_html('<span class="status status--{}">{}</span>', status, _STATUS_WORDS.get(status, status))
