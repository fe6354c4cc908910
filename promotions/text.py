"""Free text a person types into the workflow: a justification, a review's comment, a token's name.

The page, the API and the CLI all reach the services, and the CLI passes anything: the one check
lives here, where every service that stores such text calls it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.utils.dateparse import parse_datetime

from promotions.errors import InvalidRequest


def clean_text(value: str | None, *, what: str, max_length: int, required: str = "") -> str:
    """`value` trimmed; InvalidRequest when it is empty and `required` (the message) says it may
    not be, when it is longer than `max_length`, or when it holds a NUL character (PostgreSQL
    stores none in text)."""
    text = (value or "").strip()
    if required and not text:
        raise InvalidRequest(required)
    if "\x00" in text:
        raise InvalidRequest(f"The {what} contains a NUL character.")
    if len(text) > max_length:
        raise InvalidRequest(f"The {what} is too long ({len(text)} characters; at most {max_length}).")
    return text


def signature_line(*, name: str, username: str, signed_at: datetime | str, meaning: str) -> str:
    """A signature as every page shows it: 'Signed by Rita Reviewer (rita) · 2026-11-28 14:03:11
    UTC · Approved for release' (name, time and meaning together, 21 CFR 11.50)."""
    moment = parse_datetime(signed_at) if isinstance(signed_at, str) else signed_at
    shown = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else str(signed_at)
    return f"Signed by {name} ({username}) · {shown} UTC · {meaning}"
