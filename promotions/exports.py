"""Reading the audit log as auditors do: filters, pages, streaming exports with a manifest,
and the offline check of an exported file.

Shared by the auditors' pages (`promotions/audit_views.py`), `manage.py export_audit_log` and
`manage.py verify_audit_log --export FILE`.

Export files
------------
Both formats hold the columns `EXPORT_COLUMNS`, one event a row, by sequence ascending, UTF-8.
`created_at` is `audit.utc_iso` (UTC, microseconds); `details` is `audit.canonical_json` text.

- CSV: RFC 4180 (comma; double quotes only where needed; CRLF), a header row first, `details` as
  its canonical JSON string. Against formula injection a cell that starts with ``= + - @``, TAB,
  CR or ``'`` gets one ``'`` put in front. The quote itself is in that list so the escaping can be
  undone without ambiguity: **a reader removes one leading ``'`` from every cell that has one**
  before recomputing hashes (`verify_export` does).
- JSON Lines: one compact JSON object a line (keys in column order, LF), `details` an object with
  sorted keys. No escaping.

The manifest `FILE.manifest.json` holds format, rows, first/last sequence, `chain_head` (hash of
the file's last row), `database_head` (sequence and hash of the chain head the export was cut
at), `chain_origin` (hash of entry #1: which log this is), `sha256` of the file's bytes, the
filter, `complete` (no filter: the chain links are checkable) and `generated_at`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from json.encoder import encode_basestring as _json_string
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from django.core.cache import cache
from django.db import DatabaseError, connections
from django.db.models import F, Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from promotions import audit
from promotions.models import AuditChainHead, AuditEvent, Stage

EXPORT_FORMATS = ("csv", "jsonl")
EXPORT_COLUMNS = (
    "sequence",
    "created_at",
    "actor_username",
    "actor_name",
    "action",
    "meaning",
    "model_name",
    "version",
    "from_stage",
    "to_stage",
    "request_id",
    "details",
    "prev_hash",
    "hash",
)
FILTER_FIELDS = ("since", "until", "model", "stage", "actor", "action", "text")
KNOWN_ACTIONS = (
    "audit.exported",
    "auth.denied",
    "promotion.applied",
    "promotion.failed",
    "registry.drift",
    "request.approved",
    "request.cancelled",
    "request.created",
    "request.evidence_changed",
    "request.expired",
    "request.retried",
    "review.approved",
    "review.rejected",
    "stage.changed",
    "stage.created",
    "stage.deleted",
)
CHUNK_SIZE = 2000  # rows a database round trip
_LINES_PER_WRITE = 1000  # rows per yielded block: few, large writes keep streaming cheap
_MAX_FILTER_LENGTH = {"model": 256, "stage": 64, "actor": 150, "action": 32, "text": 200}

CSV_FORMULA_ESCAPE = (
    "A cell that starts with = + - @ TAB CR or ' has one ' put in front; remove one leading ' "
    "from every cell that starts with ' before recomputing hashes."
)


class FilterError(ValueError):
    """A filter value the log cannot be searched by; the message says why, for people."""


# --- filters --------------------------------------------------------------------------------


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
            events = events.filter(meaning__icontains=self.text)
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
    # Actions other modules add later still work once they are in the log.
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


# --- the page -------------------------------------------------------------------------------


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
    return LogPage(events=rows, newer_after=newer, older_before=older)


CHAIN_STATUS_TTL = 600
CHAIN_FULL_WALK_EVERY = 3600
CHAIN_PREFIX_KEY = "audit-chain-verified-prefix"


def chain_head() -> tuple[int, str]:
    """(sequence, hash) of the last entry, as the chain head row records it."""
    return AuditChainHead.objects.values_list("last_sequence", "last_hash").get(pk=1)


def chain_status(head: tuple[int, str]) -> audit.ChainReport:
    """Whether the chain verifies up to `head` (from `chain_head()`), as audit.verify_database.

    A full walk is O(n): seconds at a million entries, in the web request's one process (it
    starts no worker processes). The head moves with every entry, so the result is cached per
    head, and once the chain has verified up to an entry, later views walk only the entries after
    it; the full walk is redone at most every CHAIN_FULL_WALK_EVERY seconds, which is how soon the
    page notices an entry edited behind the database's back in the part already verified.
    `verify_audit_log` always walks everything.
    """
    key = f"audit-chain-status:{head[0]}:{head[1]}"
    report = cache.get(key)
    if report is not None:
        return report
    prefix = cache.get(CHAIN_PREFIX_KEY)
    if prefix is not None and not (
        prefix[0] <= head[0]
        # the same log still (not a restored or another database): its entry still has that hash
        and AuditEvent.objects.filter(sequence=prefix[0], hash=prefix[1]).exists()
    ):
        prefix = None
    if prefix is not None:
        report = _verify_after(prefix)
    else:
        report = verify_database(parallel=False)
    cache.set(key, report, CHAIN_STATUS_TTL)
    if report.ok:
        # Keep the time of the last full walk: the prefix must not be trusted for ever.
        walked_at = prefix[2] if prefix is not None else timezone.now().timestamp()
        remaining = CHAIN_FULL_WALK_EVERY - (timezone.now().timestamp() - walked_at)
        if remaining > 0:
            cache.set(CHAIN_PREFIX_KEY, (report.count, report.head_hash, walked_at), remaining)
    return report


def _verify_after(prefix: tuple[int, str, float]) -> audit.ChainReport:
    """audit.verify_database for the entries after a verified (sequence, hash)."""
    sequence, last_hash, _walked_at = prefix
    return _verify_database_after(sequence, last_hash, parallel=False)


# --- exports --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportCut:
    """What an export covers: the filter, and the chain head it was cut at."""

    filter: AuditFilter
    through: int  # the last sequence the export may hold
    through_hash: str  # that entry's hash (GENESIS_HASH for an empty log)
    origin_hash: str | None  # entry #1's hash: which log the export comes from


def export_cut(audit_filter: AuditFilter, *, through: int | None = None) -> ExportCut:
    """Fix the export's end at the chain head now (or at `through`, if earlier).

    Taken before the export's own `audit.exported` entry is recorded, so that entry is never
    inside the export it records; and a manifest asked later with the same `through` describes
    the same bytes.
    """
    head = AuditChainHead.objects.get(pk=1)
    last = head.last_sequence if through is None else min(through, head.last_sequence)
    stored = dict(AuditEvent.objects.filter(sequence__in={1, last}).values_list("sequence", "hash"))
    if last == head.last_sequence:
        through_hash = head.last_hash
    else:
        through_hash = stored.get(last, audit.GENESIS_HASH)
    return ExportCut(filter=audit_filter, through=last, through_hash=through_hash, origin_hash=stored.get(1))


def export_filename(cut: ExportCut, *, fmt: str) -> str:
    scope = "filtered" if not cut.filter.is_empty else "all"
    return f"audit-log-{scope}-through-{cut.through}.{fmt}"


def record_export(*, actor, cut: ExportCut, fmt: str, via: str) -> AuditEvent:
    return audit.record(
        action="audit.exported",
        actor=actor,
        meaning=f"Exported the audit log as {fmt.upper()} ({cut.filter.describe()}), "
        f"entries up to #{cut.through}",
        details={"format": fmt, "filter": cut.filter.as_dict(), "through": cut.through, "via": via},
    )


def _export_rows(cut: ExportCut) -> tuple[Iterator[tuple], Callable[[Any], str], Callable[[Any], str]]:
    """The rows in column order, with the functions that turn their created_at and details into
    export text (audit.utc_iso and audit.canonical_json of the stored values)."""
    return _rows_of(cut.filter.queryset().filter(sequence__lte=cut.through))


def _rows_of(
    events: QuerySet[AuditEvent],
) -> tuple[Iterator[tuple], Callable[[Any], str], Callable[[Any], str]]:
    """_export_rows for any set of events: (rows in EXPORT_COLUMNS order by sequence, iso, canonical)."""
    # sequence is selected under another name: Django orders a values_list by select position
    # ("ORDER BY 1") when the ordering names a selected column, and the audit page's tests find
    # the chain walk by its 'ORDER BY "promotions_auditevent"."sequence"'.
    events = events.order_by("sequence").annotate(sequence_value=F("sequence"))
    columns = ["sequence_value", *EXPORT_COLUMNS[1:]]
    # values_list, not model instances: a model per row costs more than all the rest of the
    # row's work. On SQLite, also fetch created_at and details as the text the database keeps:
    # Django's per-row converters (parse_datetime, json.loads) halve the export's speed there.
    if connections[events.db].vendor == "sqlite":
        events = events.annotate(
            created_text=Cast("created_at", TextField()), details_text=Cast("details", TextField())
        )
        columns[1], columns[11] = "created_text", "details_text"
        iso, canonical = _iso_from_sqlite_text, _canonical_from_text
    else:
        iso, canonical = audit.utc_iso, _canonical_json
    return events.values_list(*columns).iterator(chunk_size=CHUNK_SIZE), iso, canonical


# audit.canonical_json with one encoder for the whole export instead of one per call.
_canonical_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


_decode_json = json.JSONDecoder().raw_decode


def _canonical_from_text(text: str) -> str:
    # raw_decode is json.loads without its two whitespace scans, a fifth of the row's cost; the
    # text is what Django wrote. Anything unusual around the value goes to json.loads to judge.
    try:
        value, end = _decode_json(text)
    except ValueError:
        end = -1
    if end != len(text):
        value = json.loads(text)
    return _canonical_json(value)


def _iso_from_sqlite_text(text: str) -> str:
    """audit.utc_iso of a datetime as Django keeps it in SQLite: naive UTC, str() of it."""
    if len(text) == 26:  # 2026-11-25 14:02:03.123456
        return f"{text[:10]}T{text[11:]}+00:00"
    if len(text) == 19:  # str() leaves out a zero microsecond
        return f"{text[:10]}T{text[11:]}.000000+00:00"
    return audit.utc_iso(parse_datetime(text).replace(tzinfo=UTC))


def _row_texts(row: tuple, iso: Callable[[Any], str], canonical: Callable[[Any], str]) -> tuple[str, ...]:
    """A database row as the 14 texts both formats carry (numbers as digits, None as '')."""
    (sequence, created_at, username, name, action, meaning, model, version, source, target,
     request_id, details, prev_hash, hash_) = row  # fmt: skip
    return (
        str(sequence),
        iso(created_at),
        username,
        name,
        action,
        meaning,
        model,
        "" if version is None else str(version),
        source,
        target,
        "" if request_id is None else str(request_id),
        canonical(details),
        prev_hash,
        hash_,
    )


_FORMULA_START = frozenset("=+-@\t\r'")
_NEEDS_QUOTES = re.compile(r'[",\r\n]').search


def _csv_cell(text: str) -> str:
    if text and text[0] in _FORMULA_START:
        text = "'" + text
    # What csv.writer does with QUOTE_MINIMAL, by hand: this is the export's hot loop, and the
    # tests read every export back with the csv module.
    if _NEEDS_QUOTES(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_record(texts: tuple[str, ...]) -> str:
    t = texts
    # sequence, version and request_id are digits (or empty): nothing to quote or escape. Most
    # rows need nothing done to the other cells but quoting details, and a few substring tests
    # over them all find that out faster than a function call per cell.
    joined = "\x00".join((t[1], t[2], t[3], t[4], t[5], t[6], t[8], t[9], t[12], t[13]))
    if (
        '"' in joined
        or "," in joined
        or "\n" in joined
        or "\r" in joined
        or joined[:1] in _FORMULA_START
        or _ESCAPED_CELL_AFTER_NUL(joined)
    ):
        c = _csv_cell
        return (
            f"{t[0]},{c(t[1])},{c(t[2])},{c(t[3])},{c(t[4])},{c(t[5])},{c(t[6])},{t[7]},{c(t[8])},"
            f"{c(t[9])},{t[10]},{c(t[11])},{c(t[12])},{c(t[13])}\r\n"
        )
    return (
        f"{t[0]},{t[1]},{t[2]},{t[3]},{t[4]},{t[5]},{t[6]},{t[7]},{t[8]},{t[9]},{t[10]},"
        f"{_csv_cell(t[11])},{t[12]},{t[13]}\r\n"
    )


# A cell (other than the first) that starts with a character to escape; a NUL inside a cell
# can only make this match needlessly, sending the row down the per-cell path.
_ESCAPED_CELL_AFTER_NUL = re.compile("\x00[=+\\-@\t']").search


_CSV_HEADER = ",".join(EXPORT_COLUMNS) + "\r\n"


def _json_number(text: str) -> str:
    return text or "null"


def _jsonl_record(texts: tuple[str, ...]) -> str:
    # Equal to json.dumps(row, ensure_ascii=False, separators=(",", ":")) with the keys in column
    # order and details already canonical; spliced by hand for speed.
    s = _json_string
    return (
        f'{{"sequence":{texts[0]},"created_at":{s(texts[1])},"actor_username":{s(texts[2])},'
        f'"actor_name":{s(texts[3])},"action":{s(texts[4])},"meaning":{s(texts[5])},'
        f'"model_name":{s(texts[6])},"version":{_json_number(texts[7])},"from_stage":{s(texts[8])},'
        f'"to_stage":{s(texts[9])},"request_id":{_json_number(texts[10])},"details":{texts[11]},'
        f'"prev_hash":{s(texts[12])},"hash":{s(texts[13])}}}\n'
    )


_HASH_ORDER = (
    "action",
    "actor_name",
    "actor_username",
    "created_at",
    "details",
    "from_stage",
    "meaning",
    "model_name",
    "prev_hash",
    "request_id",
    "sequence",
    "to_stage",
    "version",
)
# _hash_texts spells out audit.compute_hash's canonical JSON; refuse to start if they drift apart.
if tuple(sorted(audit.HASHED_FIELDS)) != _HASH_ORDER:
    raise ImportError("audit.HASHED_FIELDS changed: update exports._hash_texts to match")


def _hash_texts(texts: tuple[str, ...]) -> str:
    """audit.compute_hash of a row given as export texts, without building the payload dict.

    The canonical JSON (sorted keys, compact, ensure_ascii=False) is spliced from the texts: the
    details text is used as it is, so a details cell that is not canonical fails the hash.
    """
    s = _json_string
    body = (
        f'{{"action":{s(texts[4])},"actor_name":{s(texts[3])},"actor_username":{s(texts[2])},'
        f'"created_at":{s(texts[1])},"details":{texts[11]},"from_stage":{s(texts[8])},'
        f'"meaning":{s(texts[5])},"model_name":{s(texts[6])},"prev_hash":{s(texts[12])},'
        f'"request_id":{_json_number(texts[10])},"sequence":{texts[0]},"to_stage":{s(texts[9])},'
        f'"version":{_json_number(texts[7])}}}'
    )
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class ExportTally:
    """Filled in while an export streams: what its manifest says."""

    rows: int = 0
    first_sequence: int | None = None
    last_sequence: int | None = None
    last_hash: str | None = None
    digest: Any = field(default_factory=hashlib.sha256)


def iter_export(cut: ExportCut, *, fmt: str, tally: ExportTally | None = None) -> Iterator[bytes]:
    """The export's bytes in blocks of about a thousand rows; memory stays flat."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}")
    tally = tally if tally is not None else ExportTally()
    record = _csv_record if fmt == "csv" else _jsonl_record
    lines: list[str] = [_CSV_HEADER] if fmt == "csv" else []
    rows, iso, canonical = _export_rows(cut)
    row = None
    for row in rows:
        lines.append(record(_row_texts(row, iso, canonical)))
        if tally.first_sequence is None:
            tally.first_sequence = row[0]
        tally.rows += 1
        if len(lines) >= _LINES_PER_WRITE:
            yield _flush(lines, tally)
    if row is not None:
        tally.last_sequence, tally.last_hash = row[0], row[-1]
    if lines:
        yield _flush(lines, tally)


def _flush(lines: list[str], tally: ExportTally) -> bytes:
    data = "".join(lines).encode()
    tally.digest.update(data)
    lines.clear()
    return data


def build_manifest(cut: ExportCut, *, fmt: str, tally: ExportTally) -> dict[str, Any]:
    manifest = {
        "format": fmt,
        "rows": tally.rows,
        "first_sequence": tally.first_sequence,
        "last_sequence": tally.last_sequence,
        "chain_head": tally.last_hash,
        "database_head": {"sequence": cut.through, "hash": cut.through_hash},
        "chain_origin": cut.origin_hash,
        "sha256": tally.digest.hexdigest(),
        "filter": cut.filter.as_dict(),
        "complete": cut.filter.is_empty,
        "generated_at": audit.utc_iso(timezone.now()),
        "columns": list(EXPORT_COLUMNS),
    }
    if fmt == "csv":
        manifest["csv_formula_escape"] = CSV_FORMULA_ESCAPE
    return manifest


def manifest_for(cut: ExportCut, *, fmt: str) -> dict[str, Any]:
    """The manifest of the export `cut` would stream (generated and hashed, then dropped)."""
    tally = ExportTally()
    for _block in iter_export(cut, fmt=fmt, tally=tally):
        pass
    return build_manifest(cut, fmt=fmt, tally=tally)


def manifest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".manifest.json")


def write_export(path: str | os.PathLike, *, cut: ExportCut, fmt: str) -> dict[str, Any]:
    """Write FILE and FILE.manifest.json; each appears whole or not at all."""
    path = Path(path)
    tally = ExportTally()
    _write_atomically(path, lambda handle: handle.writelines(iter_export(cut, fmt=fmt, tally=tally)))
    manifest = build_manifest(cut, fmt=fmt, tally=tally)
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    _write_atomically(manifest_path(path), lambda handle: handle.write(text.encode()))
    return manifest


def _write_atomically(path: Path, write) -> None:
    handle = tempfile.NamedTemporaryFile(dir=path.parent or ".", prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            write(handle)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


# --- verifying an export --------------------------------------------------------------------


_Row = tuple[int, str, str, str]  # sequence, hash recomputed from the row, prev_hash, hash


class _BadRow(Exception):
    def __init__(self, sequence: int | None, reason: str):
        super().__init__(reason)
        self.sequence = sequence
        self.reason = reason


def _sequence_of(texts: tuple[str, ...], position: int) -> int:
    text = texts[0]
    if not (text.isascii() and text.isdigit()):
        raise _BadRow(None, f"row {position} of the file: sequence '{text[:40]}' is not a number")
    return int(text)


def _check_numbers(texts: tuple[str, ...], sequence: int) -> None:
    """_hash_texts splices version and request_id into JSON as they are, so they must be numbers.

    With details the only cell spliced free, no cell can swallow a neighbour's text and pass the
    hash with other content: every other piece is a whole JSON string or number, and each key
    of the hashed object then occurs exactly once outside details.
    """
    for index in (7, 10):
        if texts[index] and not (texts[index].isascii() and texts[index].isdigit()):
            raise _BadRow(sequence, f"its {EXPORT_COLUMNS[index]} '{texts[index][:40]}' is not a number")


def _unescaped(cells: list[str]) -> tuple[str, ...]:
    # Few cells are escaped: look for one before paying for a pass over every cell.
    if cells[0][:1] == "'" or "\x00'" in "\x00".join(cells):
        return tuple(cell[1:] if cell[:1] == "'" else cell for cell in cells)
    return tuple(cells)


def _csv_rows(handle, *, exact: bool, header: bool = True) -> Iterator[_Row]:
    """(sequence, recomputed hash, prev_hash, hash) of each row. `exact` also requires each row's
    bytes to be what the export writes, to name a row changed without its content changing;
    `header` is False for a part of the file after its first line."""
    raw: list[str] = []

    def kept_lines() -> Iterator[str]:
        # csv.reader pulls one physical line at a time; keeping them gives each record's bytes.
        for line in handle:
            raw.append(line)
            yield line

    reader = csv.reader(kept_lines() if exact else handle)
    if header and (next(reader, None) != list(EXPORT_COLUMNS) or (exact and "".join(raw) != _CSV_HEADER)):
        raise _BadRow(None, "the file does not start with the export's header row")
    raw.clear()
    width = len(EXPORT_COLUMNS)
    for position, cells in enumerate(reader, start=1):
        if len(cells) != width:
            raise _BadRow(None, f"row {position} of the file has {len(cells)} cells, not {width}")
        texts = _unescaped(cells)
        sequence = _sequence_of(texts, position)
        _check_numbers(texts, sequence)
        if exact:
            if _csv_record(texts) != "".join(raw):
                raise _BadRow(
                    sequence,
                    "the row is not written the way the export writes it (its quoting, escaping "
                    "or line ending was changed)",
                )
            raw.clear()
        yield sequence, _hash_texts(texts), texts[12], texts[13]


_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'  # a whole JSON string token (unrolled: fast)
_NUMBER = r"-?[0-9]+"
# A line in the export's own layout: a head of whole JSON tokens up to details, then details,
# then a tail of fixed length holding the two hashes.
_LINE_HEAD = re.compile(
    rf'\{{"sequence":({_NUMBER}),"created_at":({_STRING}),"actor_username":({_STRING}),'
    rf'"actor_name":({_STRING}),"action":({_STRING}),"meaning":({_STRING}),"model_name":({_STRING}),'
    rf'"version":({_NUMBER}|null),"from_stage":({_STRING}),"to_stage":({_STRING}),'
    rf'"request_id":({_NUMBER}|null),"details":'
)
_LINE_TAIL = re.compile(r',"prev_hash":"([0-9a-f]{64})","hash":"([0-9a-f]{64})"\}\n\Z')
_LINE_TAIL_LENGTH = 155


def _hash_tokens(t: tuple[str, ...], details: str, prev_hash: str) -> str:
    """_hash_texts for a line of the export's own layout, from its JSON tokens as they stand.

    Safe for the reason given in _check_numbers: every token but details is a whole JSON string
    or number. A token not spelled as audit.canonical_json spells it fails the hash.
    """
    body = (
        f'{{"action":{t[4]},"actor_name":{t[3]},"actor_username":{t[2]},"created_at":{t[1]},'
        f'"details":{details},"from_stage":{t[8]},"meaning":{t[5]},"model_name":{t[6]},'
        f'"prev_hash":"{prev_hash}","request_id":{t[10]},"sequence":{t[0]},"to_stage":{t[9]},'
        f'"version":{t[7]}}}'
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _jsonl_rows(handle, *, exact: bool) -> Iterator[_Row]:
    """(sequence, recomputed hash, prev_hash, hash) of each line; `exact` as for _csv_rows."""
    match_head, match_tail = _LINE_HEAD.match, _LINE_TAIL.match
    for position, line in enumerate(handle, start=1):
        if not exact:
            head = match_head(line)
            cut = len(line) - _LINE_TAIL_LENGTH
            tail = match_tail(line, cut) if head is not None and head.end() < cut else None
            if tail is not None:
                # The line is in the export's layout: hash its tokens without decoding them.
                t, (prev_hash, hash_) = head.groups(), tail.groups()
                yield int(t[0]), _hash_tokens(t, line[head.end() : cut], prev_hash), prev_hash, hash_
                continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise _BadRow(None, f"row {position} of the file is not JSON: {exc}") from None
        if type(row) is not dict or tuple(row) != EXPORT_COLUMNS:
            raise _BadRow(None, f"row {position} of the file does not have the export's columns")
        sequence, version, request_id = row["sequence"], row["version"], row["request_id"]
        # `type(...) is int`: a bool is an int to isinstance, and JSON true is not a number here.
        if (
            type(sequence) is not int
            or (version is not None and type(version) is not int)
            or (request_id is not None and type(request_id) is not int)
        ):
            raise _BadRow(
                None, f"row {position} of the file: sequence, version or request_id is not a number"
            )
        texts = (
            str(sequence),
            row["created_at"],
            row["actor_username"],
            row["actor_name"],
            row["action"],
            row["meaning"],
            row["model_name"],
            "" if version is None else str(version),
            row["from_stage"],
            row["to_stage"],
            "" if request_id is None else str(request_id),
            _canonical_json(row["details"]),
            row["prev_hash"],
            row["hash"],
        )
        if not all(type(text) is str for text in texts):
            raise _BadRow(sequence, "a text column holds something other than text")
        if exact and _jsonl_record(texts) != line:
            raise _BadRow(
                sequence, "the row is not written the way the export writes it (spacing or key order)"
            )
        yield sequence, _hash_texts(texts), texts[12], texts[13]


@dataclass
class _Walk:
    count: int = 0
    first_sequence: int | None = None
    last_sequence: int | None = None
    last_hash: str | None = None


def _walk(rows: Iterator[_Row], walk: _Walk, *, complete: bool, announced: int) -> None:
    """Check each row's hash, order and (complete exports) links; raise _BadRow at the first bad one."""
    previous, previous_hash = (0, audit.GENESIS_HASH) if complete else (None, None)
    try:
        for sequence, recomputed, prev_hash, hash_ in rows:
            walk.count += 1
            if recomputed != hash_:
                raise _BadRow(sequence, "its hash does not match its content")
            if complete:
                if sequence != previous + 1:
                    raise _BadRow(
                        sequence,
                        f"sequence {sequence} follows {previous}: an entry is missing or out of order"
                        if previous
                        else f"the export starts at {sequence}, not 1: entries are missing",
                    )
                if prev_hash != previous_hash:
                    raise _BadRow(sequence, "its prev_hash does not match the entry before it")
            elif previous is not None and sequence <= previous:
                raise _BadRow(
                    sequence, f"sequence {sequence} follows {previous}: rows are out of order or repeated"
                )
            if walk.count > announced:
                raise _BadRow(sequence, f"the manifest announces {announced} rows; this is row {walk.count}")
            if walk.first_sequence is None:
                walk.first_sequence = sequence
            previous, previous_hash = sequence, hash_
    finally:
        # the last good row, also when a bad one stopped the walk
        if walk.first_sequence is not None:
            walk.last_sequence, walk.last_hash = previous, previous_hash


def _manifest_problem(manifest: Any) -> str:
    if not isinstance(manifest, dict):
        return "the manifest is not a JSON object"
    if manifest.get("format") not in EXPORT_FORMATS:
        return f"the manifest's format is {manifest.get('format')!r}, not csv or jsonl"
    if type(manifest.get("rows")) is not int:
        return "the manifest's rows is not a number"
    for name in ("first_sequence", "last_sequence"):
        value = manifest.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return f"the manifest's {name} is not a number"
    if not isinstance(manifest.get("sha256"), str):
        return "the manifest has no sha256"
    if not isinstance(manifest.get("filter"), dict):
        return "the manifest has no filter"
    if manifest.get("complete") is not (not manifest["filter"]):
        return "the manifest's 'complete' does not agree with its filter"
    head = manifest.get("database_head")
    if (
        not isinstance(head, dict)
        or not isinstance(head.get("sequence"), int)
        or not isinstance(head.get("hash"), str)
    ):
        return "the manifest has no database_head"
    return ""


# Files this large are checked by several processes (one a CPU), in parts of about
# PARALLEL_PART_BYTES; below it, starting them costs more than they save.
PARALLEL_MIN_BYTES = 64 << 20
PARALLEL_PART_BYTES = 16 << 20


def _hash_and_split(path: Path, *, fmt: str) -> tuple[str, list[tuple[int, int]]]:
    """The file's SHA-256, and byte ranges that each hold whole rows (for _parallel_walk).

    A CSV row ends at a newline only outside quotes, that is after an even number of '"' since
    the file's start (a quote inside a cell is written twice). Neither byte occurs inside a
    multi-byte UTF-8 character.
    """
    digest = hashlib.sha256()
    parts: list[tuple[int, int]] = []
    start = offset = quotes = 0
    split = os.path.getsize(path) >= PARALLEL_MIN_BYTES
    with open(path, "rb") as handle:
        while block := handle.read(PARALLEL_PART_BYTES):
            digest.update(block)
            cut = block.rfind(b"\n") if split else -1
            if fmt == "csv":
                # step back past newlines inside quoted cells (rare: a few tries at most)
                for _attempt in range(64):
                    if cut < 0 or (quotes + block.count(b'"', 0, cut)) % 2 == 0:
                        break
                    cut = block.rfind(b"\n", 0, cut)
                else:
                    cut = -1
                quotes += block.count(b'"')
            if cut >= 0:
                parts.append((start, offset + cut + 1))
                start = offset + cut + 1
            offset += len(block)
    if offset > start or not parts:
        parts.append((start, offset))
    return digest.hexdigest(), parts


@dataclass(frozen=True)
class _PartSummary:
    ok: bool
    count: int = 0
    first_sequence: int | None = None
    first_prev: str | None = None
    last_sequence: int | None = None
    last_hash: str | None = None


def _summarise_part(task: tuple[str, int, int, str, bool]) -> _PartSummary:
    """In a worker: the same checks as _walk over one part, without naming anything."""
    path, start, end, fmt, complete = task
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            text = handle.read(end - start).decode()
        part = io.StringIO(text, newline="")
        rows = (
            _csv_rows(part, exact=False, header=start == 0)
            if fmt == "csv"
            else _jsonl_rows(part, exact=False)
        )
        count, first, first_prev, previous, previous_hash = 0, None, None, None, None
        for sequence, recomputed, prev_hash, hash_ in rows:
            if recomputed != hash_:
                return _PartSummary(False)
            if previous is None:
                first, first_prev = sequence, prev_hash
            elif sequence <= previous or (
                complete and (sequence != previous + 1 or prev_hash != previous_hash)
            ):
                return _PartSummary(False)
            count, previous, previous_hash = count + 1, sequence, hash_
        return _PartSummary(True, count, first, first_prev, previous, previous_hash)
    except (_BadRow, csv.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return _PartSummary(False)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _map_in_workers(function: Callable[[Any], Any], tasks: list, workers: int) -> list | None:
    """[function(task) for task in tasks], run by `workers` forked processes; None without fork.

    Waits for every task, even when an early answer already settles the matter: a pool
    terminated while a worker is still sending its answer can be left with the answer queue's
    lock held by the dead worker, and then never finishes shutting down.
    """
    try:
        context = multiprocessing.get_context("fork")
    except ValueError:  # no fork on this platform
        return None
    with context.Pool(min(workers, len(tasks))) as pool:
        return pool.map(function, tasks, chunksize=1)


def _parallel_walk(path: Path, parts: list[tuple[int, int]], *, fmt: str, complete: bool) -> _Walk | None:
    """_walk's totals for a file whose parts all check and join up, from several processes.

    None at the first doubt: the caller then walks the file in one process, which names the bad
    row. So this path can only ever accept a file that the one-process walk accepts too.
    """
    tasks = [(str(path), start, end, fmt, complete) for start, end in parts]
    summaries = _map_in_workers(_summarise_part, tasks, _cpus())
    if summaries is None:
        return None
    walk = _Walk()
    previous, previous_hash = (0, audit.GENESIS_HASH) if complete else (None, None)
    for summary in summaries:
        if not summary.ok:
            return None
        if not summary.count:
            continue
        if complete and (summary.first_sequence != previous + 1 or summary.first_prev != previous_hash):
            return None
        if not complete and previous is not None and summary.first_sequence <= previous:
            return None
        if walk.first_sequence is None:
            walk.first_sequence = summary.first_sequence
        walk.count += summary.count
        previous, previous_hash = summary.last_sequence, summary.last_hash
    if walk.count:
        walk.last_sequence, walk.last_hash = previous, previous_hash
    return walk


def verify_export(path: str | os.PathLike, *, check_database: bool = True) -> audit.ChainReport:
    """Check an exported file against FILE.manifest.json beside it; name the first bad row.

    Offline: every row's hash recomputed from its cells, sequences ascending, for a complete
    (unfiltered) export the links from entry #1 on, then rows, first/last sequence and chain head
    against the manifest, then the file's SHA-256. With `check_database`, when the database here
    holds the same log (its entry #1 is the manifest's chain_origin), the manifest's database
    head and the file's last row must also match the database's entries at those sequences: an
    export rewritten with recomputed hashes fails there.

    When the file's SHA-256 is the manifest's, rows are checked for content only; otherwise each
    row is also compared byte for byte with how the export writes it, to name the changed row.
    So a file re-quoted and given a recomputed manifest passes: its content is still proven.

    A file of PARALLEL_MIN_BYTES or more is first checked in parts, a process per CPU; at the
    first doubt there, the one-process walk runs instead and names the bad row.
    """
    path = Path(path)
    manifest_file = manifest_path(path)
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _broken(None, f"there is no manifest {manifest_file.name} beside the export")
    except (OSError, ValueError) as exc:
        return _broken(None, f"the manifest {manifest_file.name} is not readable JSON ({exc})")
    problem = _manifest_problem(manifest)
    if problem:
        return _broken(None, problem)
    fmt, complete, announced = manifest["format"], manifest["complete"], manifest["rows"]
    try:
        actual, parts = _hash_and_split(path, fmt=fmt)
    except FileNotFoundError:
        return _broken(None, f"the export {path.name} does not exist")
    # Bytes as the manifest says: the rows are as exported, only their content needs checking.
    # Otherwise also compare each row with how the export writes it, to name where they differ.
    exact = actual != manifest["sha256"]
    walk = None if exact or len(parts) < 2 else _parallel_walk(path, parts, fmt=fmt, complete=complete)
    if walk is not None and (walk.count != announced or _manifest_mismatch(walk, manifest)):
        walk = None
    if walk is None:
        walk = _Walk()
        try:
            # newline="" keeps line endings as written, for `exact`.
            with open(path, encoding="utf-8", newline="") as handle:
                rows = _csv_rows(handle, exact=exact) if fmt == "csv" else _jsonl_rows(handle, exact=exact)
                _walk(rows, walk, complete=complete, announced=announced)
            _compare_with_manifest(walk, manifest)
        except _BadRow as bad:
            return audit.ChainReport(
                False, walk.count, walk.last_hash or audit.GENESIS_HASH, bad.sequence, bad.reason
            )
        except csv.Error as exc:
            return _broken(None, f"the file is not valid CSV {_after(walk)} ({exc})")
        except UnicodeDecodeError as exc:
            return _broken(None, f"the file is not UTF-8 {_after(walk)} ({exc.reason})")
    head = walk.last_hash or audit.GENESIS_HASH
    if actual != manifest["sha256"]:
        return audit.ChainReport(
            False,
            walk.count,
            head,
            None,
            f"every row checks, but the file's SHA-256 is {actual} and the manifest says "
            f"{manifest['sha256']}: the file or its manifest was changed",
        )
    if check_database:
        disagreement = _database_disagrees(manifest, walk)
        if disagreement:
            return audit.ChainReport(False, walk.count, head, *disagreement)
    return audit.ChainReport(True, walk.count, head)


def _manifest_mismatch(walk: _Walk, manifest: dict[str, Any]) -> bool:
    try:
        _compare_with_manifest(walk, manifest)
    except _BadRow:
        return True
    return False


def _compare_with_manifest(walk: _Walk, manifest: dict[str, Any]) -> None:
    announced = manifest["rows"]
    if walk.count < announced:
        missing = (walk.last_sequence or 0) + 1 if manifest["complete"] else manifest.get("last_sequence")
        raise _BadRow(
            missing,
            f"the manifest announces {announced} rows, the file has {walk.count}: "
            "rows at the end are missing",
        )
    if walk.first_sequence != manifest["first_sequence"]:
        raise _BadRow(
            walk.first_sequence,
            f"the file starts at entry #{walk.first_sequence}, "
            f"the manifest says #{manifest['first_sequence']}",
        )
    if walk.last_sequence != manifest["last_sequence"]:
        raise _BadRow(
            walk.last_sequence,
            f"the file ends at entry #{walk.last_sequence}, the manifest says #{manifest['last_sequence']}",
        )
    if walk.last_hash != manifest.get("chain_head"):
        raise _BadRow(walk.last_sequence, "its hash is not the manifest's chain_head")
    head = manifest["database_head"]
    if manifest["complete"] and (
        head["sequence"] != (walk.last_sequence or 0)
        or (walk.last_hash is not None and head["hash"] != walk.last_hash)
    ):
        raise _BadRow(
            walk.last_sequence,
            f"a complete export must end at the database head #{head['sequence']} it was cut at",
        )


def _database_disagrees(manifest: dict[str, Any], walk: _Walk) -> tuple[int, str] | None:
    head = manifest["database_head"]
    wanted = {1, head["sequence"]} | ({walk.last_sequence} if walk.last_sequence else set())
    try:
        stored = dict(AuditEvent.objects.filter(sequence__in=wanted).values_list("sequence", "hash"))
    except DatabaseError:
        return None  # no audit log here: the offline checks stand alone
    if not manifest.get("chain_origin") or stored.get(1) != manifest["chain_origin"]:
        return None  # another installation's log (or an empty one): nothing to compare with
    checks = [(head["sequence"], head["hash"])]
    if walk.last_sequence:
        checks.append((walk.last_sequence, walk.last_hash))
    for sequence, expected in checks:
        if sequence in stored and stored[sequence] != expected:
            return (
                sequence,
                f"the database's entry #{sequence} has hash {stored[sequence]}, the export says "
                f"{expected}: the export was rewritten (or the database was)",
            )
    return None


def _after(walk: _Walk) -> str:
    return f"after entry #{walk.last_sequence}" if walk.last_sequence else "before its first entry"


def _broken(sequence: int | None, reason: str) -> audit.ChainReport:
    return audit.ChainReport(False, 0, audit.GENESIS_HASH, sequence, reason)


# --- verifying the database -----------------------------------------------------------------

# Logs of this many entries or more are walked in parts by several processes (one a CPU);
# below it, starting them costs more than they save. A module constant, so tests can lower it.
DATABASE_PARALLEL_MIN_ENTRIES = 200_000
# How many times the walk follows entries recorded while it ran before it trusts the head.
CATCH_UP_ROUNDS = 3
DATABASE_PARTS_PER_WORKER = 2  # a few parts a worker, so a worker slowed down holds up less


@dataclass
class _DatabaseWalk:
    """What a walk over the entries after `after` found; picklable (a worker's answer)."""

    after: int
    count: int = 0  # entries read, the bad one included
    first_prev: str | None = None  # the first entry's prev_hash (joins a part to the one before)
    last_sequence: int | None = None  # the last good entry
    last_hash: str | None = None
    bad_sequence: int | None = None
    reason: str = ""  # why the walk stopped early; "" when every entry checked

    @property
    def first_sequence(self) -> int | None:
        # every good entry follows the one before it, the first one `after`
        return self.after + 1 if self.last_sequence is not None else None


def verify_database(*, parallel: bool = True) -> audit.ChainReport:
    """audit.verify_database: walk the whole chain by sequence; name the first bad entry.

    Each entry's hash is recomputed from a values_list row (no model instance, no payload dict:
    the canonical JSON is spliced from the columns, as for an export), then its sequence and
    prev_hash are checked against the entry before it, and at the end the log's last entry
    against the chain head.

    With `parallel`, a log of DATABASE_PARALLEL_MIN_ENTRIES or more is first walked in parts by
    worker processes, each on its own database connection; at the first doubt there, the
    one-process walk runs instead and names the bad entry. Never inside a transaction (the
    workers could not see its uncommitted entries). The web pages pass parallel=False: a web
    server's worker process is no place to fork from.
    """
    return _verify_database_after(0, audit.GENESIS_HASH, parallel=parallel)


def _verify_database_after(after: int, after_hash: str, *, parallel: bool) -> audit.ChainReport:
    """The chain from entry `after` + 1 on, given that entry `after` has hash `after_hash`."""
    walk = _parallel_database_walk(after, after_hash) if parallel else None
    if walk is None:
        walk = _walk_database(after, after_hash)
    count = after + walk.count
    head_hash = walk.last_hash if walk.last_hash is not None else after_hash
    head = AuditChainHead.objects.get(pk=1)
    # Entries recorded while the walk ran (the log is live) are past the walk's end but inside
    # the head read after it: walk them too, so that they do not look like entries removed.
    for _round in range(CATCH_UP_ROUNDS):
        if walk.reason or head.last_sequence <= count:
            break
        walk = _walk_database(count, head_hash)
        if not walk.count:
            break  # none there: entries at the end are missing
        count += walk.count
        head_hash = walk.last_hash if walk.last_hash is not None else head_hash
        head = AuditChainHead.objects.get(pk=1)
    if walk.reason:
        return audit.ChainReport(False, count, head_hash, walk.bad_sequence, walk.reason)
    if head.last_sequence != count or head.last_hash != head_hash:
        return audit.ChainReport(
            False,
            count,
            head_hash,
            head.last_sequence,
            f"the chain head records entry {head.last_sequence}, but the log ends at {count}: "
            "entries at the end were removed",
        )
    return audit.ChainReport(True, count, head_hash)


def _walk_database(
    after: int, after_hash: str | None, through: int | None = None, *, using: str | None = None
) -> _DatabaseWalk:
    """Walk the entries after `after` (up to `through`, or the end) by sequence; stop at the first
    bad one. `after_hash` None: a part of the log, its first entry's link left to the caller.

    Each entry is checked as audit.verify_database always checked it, in the same order: its
    hash (audit.compute_hash of its content), then its sequence (one more than the entry
    before's), then its prev_hash (the entry before's hash).
    """
    events = AuditEvent.objects.using(using) if using else AuditEvent.objects.all()
    if after:  # from the start: every row, whatever its sequence, as audit.verify_database did
        events = events.filter(sequence__gt=after)
    if through is not None:
        events = events.filter(sequence__lte=through)
    rows, iso, canonical = _rows_of(events)
    walk = _DatabaseWalk(after, first_prev=after_hash)
    count, previous, previous_hash = 0, after, after_hash
    s, sha256 = _json_string, hashlib.sha256
    for row in rows:
        count += 1
        (sequence, created_at, username, name, action, meaning, model, version, source, target,
         request_id, details, prev_hash, hash_) = row  # fmt: skip
        try:
            # _hash_texts, spliced from the row's values without the texts tuple between.
            body = (
                f'{{"action":{s(action)},"actor_name":{s(name)},"actor_username":{s(username)},'
                f'"created_at":{s(iso(created_at))},"details":{canonical(details)},'
                f'"from_stage":{s(source)},"meaning":{s(meaning)},"model_name":{s(model)},'
                f'"prev_hash":{s(prev_hash)},"request_id":{_json_int(request_id)},'
                f'"sequence":{_json_int(sequence)},"to_stage":{s(target)},'
                f'"version":{_json_int(version)}}}'
            )
            recomputed = sha256(body.encode()).hexdigest()
        except (TypeError, ValueError, AttributeError):
            # a value Django could not have written (on SQLite, say, a created_at that is no date)
            recomputed = None
        if recomputed == hash_ and sequence == previous + 1 and prev_hash == previous_hash:
            previous, previous_hash = sequence, hash_
            continue
        if recomputed != hash_:
            walk.bad_sequence, walk.reason = sequence, "its hash does not match its content"
        elif sequence != previous + 1:
            walk.bad_sequence = sequence
            walk.reason = f"sequence {sequence} follows {previous}: an entry is missing or out of order"
        elif previous_hash is None and count == 1:
            walk.first_prev = prev_hash  # a part's first entry: the caller checks the link
            previous, previous_hash = sequence, hash_
            continue
        else:
            walk.bad_sequence, walk.reason = sequence, "its prev_hash does not match the entry before it"
        break
    walk.count = count
    if previous != after:
        walk.last_sequence, walk.last_hash = previous, previous_hash
    return walk


def _json_int(value: Any) -> str:
    """An integer column as canonical JSON spells it (null for NULL); anything else is refused."""
    if value is None:
        return "null"
    if type(value) is not int:
        raise TypeError("not an integer")  # on SQLite a column can hold any type
    return str(value)


def _parallel_database_walk(after: int, after_hash: str) -> _DatabaseWalk | None:
    """_walk_database's totals for a log whose parts all check and join up, from several processes.

    None when the log is too small to be worth it, when forking is not safe here, or at the first
    doubt: the caller then walks the log in one process, which names the bad entry. So this path
    can only ever accept a log that the one-process walk accepts too.
    """
    alias = AuditEvent.objects.db
    connection = connections[alias]
    # Inside a transaction the workers, on their own connections, would not see its entries;
    # an in-memory SQLite database is not there for them at all.
    if connection.in_atomic_block or (connection.vendor == "sqlite" and connection.is_in_memory_db()):
        return None
    workers = _cpus()
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    # Where the log should end: only to cut it in parts (the last part runs to the real end).
    last = AuditChainHead.objects.using(alias).values_list("last_sequence", flat=True).first() or 0
    entries = last - after
    if entries < DATABASE_PARALLEL_MIN_ENTRIES or entries < 2:
        return None
    parts = min(entries, workers * DATABASE_PARTS_PER_WORKER)
    bounds = [after + entries * i // parts for i in range(parts)]
    tasks = [(alias, lo, hi) for lo, hi in zip(bounds, [*bounds[1:], None], strict=True)]
    # The workers must open connections of their own: a forked copy of this process's would
    # share its socket or file handle. Closed here, there is none for them to inherit.
    connections.close_all()
    walks = _map_in_workers(_walk_database_part, tasks, workers)
    if walks is None:
        return None
    total = _DatabaseWalk(after, first_prev=after_hash)
    previous, previous_hash = after, after_hash
    for part in walks:
        if (
            part is None
            or part.reason
            or part.last_sequence is None  # an empty part: a gap, or the log ends early
            or part.first_sequence != previous + 1
            or part.first_prev != previous_hash
        ):
            return None
        total.count += part.count
        previous, previous_hash = part.last_sequence, part.last_hash
    total.last_sequence, total.last_hash = previous, previous_hash
    return total


# Database connections a forked worker found open: its parent's (the parent closes its own
# before forking, but a connection can still come along, seen under the browser tests' live
# server). Kept here, never used or closed: either would act on the parent's socket.
_inherited_connections: list[Any] = []


def _walk_database_part(task: tuple[str, int, int | None]) -> _DatabaseWalk | None:
    """In a worker: walk one part on a connection of the worker's own, then close that."""
    alias, after, through = task
    inherited = connections[alias]
    if inherited.connection is not None:
        _inherited_connections.append(inherited)
        connections[alias] = type(inherited)(inherited.settings_dict, alias)
    try:
        return _walk_database(after, None, through, using=alias)
    except Exception:  # noqa: BLE001 - any failure is a doubt; the one-process walk reports it
        return None
    finally:
        # Opened in this worker (the parent closed its own before forking): ours to close.
        connections[alias].close()
