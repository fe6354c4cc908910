"""Finding entries as auditors do: validated filters, and the log a page at a time.

The same filters serve the audit page, its exports and manifests, and `manage.py export_audit_log`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from promotions.audit.actions import AuditAction
from promotions.audit.format import canonical_json, payload_of, utc_iso
from promotions.models import AuditEvent, Stage
from promotions.text import signature_line

FILTER_FIELDS = ("since", "until", "model", "stage", "actor", "action", "text")
KNOWN_ACTIONS = tuple(sorted(AuditAction.values))  # what the page's action menu offers
_MAX_FILTER_LENGTH = {"model": 256, "stage": 64, "actor": 150, "action": 32, "text": 200}


class FilterError(ValueError):
    """A filter value the log cannot be searched by; the message says why, for people."""


@dataclass(frozen=True)
class AuditFilter:
    """Validated filter values, kept as the text the person gave (stage in catalog spelling)."""

    since: str = ""
    until: str = ""
    model: str = ""
    stage: str = ""
    actor: str = ""
    action: str = ""
    text: str = ""

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in FILTER_FIELDS if getattr(self, name)}

    @property
    def is_empty(self) -> bool:
        return not self.as_dict()

    def query_string(self, **extra: Any) -> str:
        return urlencode({**self.as_dict(), **{k: v for k, v in extra.items() if v is not None}})

    def describe(self) -> str:
        values = self.as_dict()
        return ", ".join(f"{k}={v}" for k, v in values.items()) if values else "no filter"

    def queryset(self) -> QuerySet[AuditEvent]:
        events = AuditEvent.objects.all()
        if self.since:
            lookup, moment = _time_bound(self.since, end=False)
            events = events.filter(**{f"created_at__{lookup}": moment})
        if self.until:
            lookup, moment = _time_bound(self.until, end=True)
            events = events.filter(**{f"created_at__{lookup}": moment})
        if self.model:
            events = events.filter(model_name=self.model)
        if self.stage:
            events = events.filter(Q(from_stage__iexact=self.stage) | Q(to_stage__iexact=self.stage))
        if self.actor:
            events = events.filter(actor_username=self.actor)
        if self.action:
            events = events.filter(action=self.action)
        if self.text:
            # The meaning, and the free text a person wrote: the requester's justification and a
            # reviewer's comment, both kept in the entry's details. A scan, as the meaning's is.
            events = events.filter(
                Q(meaning__icontains=self.text)
                | Q(details__justification__icontains=self.text)
                | Q(details__comment__icontains=self.text)
            )
        return events


def _time_bound(text: str, *, end: bool) -> tuple[str, datetime]:
    """(lookup, moment). A date covers its whole UTC day; a date-time is inclusive, naive = UTC."""
    which = "end" if end else "start"
    try:
        day = parse_date(text)
        if day is not None:
            start = datetime.combine(day, time.min, tzinfo=UTC)
            return ("lt", start + timedelta(days=1)) if end else ("gte", start)
        moment = parse_datetime(text)
    except (ValueError, OverflowError):
        raise FilterError(f"The {which} '{text}' is not a valid date or time.") from None
    if moment is None:
        raise FilterError(
            f"The {which} '{text}' is not a date (2026-11-25) or an ISO 8601 date and time "
            "(2026-11-25T14:00:00Z; without an offset it is read as UTC)."
        )
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=UTC)
    return ("lte" if end else "gte"), moment


def parse_filter(values: Mapping[str, Any]) -> AuditFilter:
    """Validate filter values from a query string or command options; FilterError says why not."""
    clean: dict[str, str] = {}
    for name in FILTER_FIELDS:
        value = values.get(name)
        value = "" if value is None else str(value).strip()
        if "\x00" in value:
            raise FilterError(f"The {name} filter contains a NUL character.")
        limit = _MAX_FILTER_LENGTH.get(name, 64)
        if len(value) > limit:
            raise FilterError(f"The {name} filter is longer than {limit} characters.")
        clean[name] = value
    bounds = [
        _time_bound(clean[name], end=name == "until") if clean[name] else None for name in ("since", "until")
    ]
    if (
        bounds[0]
        and bounds[1]
        and (bounds[0][1] >= bounds[1][1] if bounds[1][0] == "lt" else bounds[0][1] > bounds[1][1])
    ):
        raise FilterError(f"The start '{clean['since']}' is after the end '{clean['until']}'.")
    if clean["stage"]:
        clean["stage"] = _catalog_stage_name(clean["stage"])
    action = clean["action"]
    # An action no longer recorded still finds the entries written while it was.
    if action and action not in KNOWN_ACTIONS and not AuditEvent.objects.filter(action=action).exists():
        raise FilterError(
            f"Action '{action}' is not one the audit log records. Known actions: {', '.join(KNOWN_ACTIONS)}."
        )
    return AuditFilter(**clean)


def _catalog_stage_name(name: str) -> str:
    # Not services.stage_get_by_name: that module loads the MLflow client, which the command
    # line export and verification have no use for. Same lookup, same message.
    found = Stage.objects.filter(name__iexact=name).values_list("name", flat=True).first()
    if found is None:
        known = ", ".join(Stage.objects.filter(is_active=True).values_list("name", flat=True))
        raise FilterError(f"Stage '{name}' is not in the stage catalog. Known stages: {known}.")
    return found


def parse_sequence(value: Any, *, name: str) -> int | None:
    """A sequence number from a query string (`before`, `after`, `through`); None when absent."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise FilterError(f"'{name}' must be an entry's sequence number, not '{text[:40]}'.")
    return int(text)


@dataclass
class LogPage:
    events: list[AuditEvent]
    newer_after: int | None  # `?after=` of the link to newer entries, None when there are none
    older_before: int | None  # `?before=` of the link to older entries


def log_page(
    audit_filter: AuditFilter, *, before: int | None = None, after: int | None = None, size: int = 50
) -> LogPage:
    """One page of events, newest first, by keyset on sequence (no OFFSET, whatever the depth)."""
    events = audit_filter.queryset()
    if after is not None:
        rows = list(events.filter(sequence__gt=after).order_by("sequence")[: size + 1])
        more_newer = len(rows) > size
        rows = rows[:size][::-1]
        newer = rows[0].sequence if rows and more_newer else None
        older = rows[-1].sequence if rows else after + 1
    else:
        if before is not None:
            events = events.filter(sequence__lt=before)
        rows = list(events.order_by("-sequence")[: size + 1])
        more_older = len(rows) > size
        rows = rows[:size]
        # A page reached through `before` has newer entries: the ones the reader came from.
        newer = rows[0].sequence if rows and before is not None else None
        older = rows[-1].sequence if more_older else None
    for event in rows:
        event.details_text = json.dumps(event.details, indent=2, sort_keys=True, ensure_ascii=False)
        # The exact values the hash covers, so a reader of the page can recompute it.
        event.hashed_json = canonical_json(payload_of(event))
        event.created_iso = utc_iso(event.created_at)
        event.signature_line = _signature_line(event.details)
    return LogPage(events=rows, newer_after=newer, older_before=older)


def _signature_line(details: Any) -> str:
    """The signature an entry records, as the request page shows it; '' for none."""
    signature = details.get("signature") if isinstance(details, dict) else None
    if not isinstance(signature, dict):
        return ""
    return signature_line(
        name=str(signature.get("name", "")),
        username=str(signature.get("username", "")),
        signed_at=str(signature.get("signed_at", "")),
        meaning=str(signature.get("meaning", "")),
    )
