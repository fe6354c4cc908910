from __future__ import annotations

from datetime import datetime, timedelta

from django import template
from django.utils import timezone
from django.utils.html import format_html

from promotions import selectors

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
    "scheduled": "Scheduled",
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


@register.filter
def applies_at(promotion) -> str:
    """A scheduled request's 'Applies at Tue 09:00 CET (in 14 h)'; '' for any other."""
    hold = selectors.request_hold(promotion)
    return hold.applies if hold else ""


@register.filter
def duration(value) -> str:
    """A span in words, its largest unit only: "7 days", "2 h", "5 min" (never "7 days, 0:00:00")."""
    if not isinstance(value, timedelta):
        return ""
    seconds = max(int(value.total_seconds()), 0)
    days, hours, minutes = seconds // 86400, seconds // 3600, seconds // 60
    if days:
        return f"{days} day{'s' if days != 1 else ''}"
    if hours:
        return f"{hours} h"
    if minutes:
        return f"{minutes} min"
    return "under a minute"


@register.filter
def age(value) -> str:
    """How long ago `value` was, in words: "2 h"."""
    if not isinstance(value, datetime):
        return ""
    return duration(timezone.now() - value)
