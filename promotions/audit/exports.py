"""Streaming exports of the audit log, with a manifest.

Shared by the auditors' pages (`promotions/audit/views.py`) and `manage.py export_audit_log`;
`verify.verify_export` (and `manage.py verify_audit_log --export FILE`) checks the files offline.

Export files
------------
Both formats hold the columns `FILE_COLUMNS`, one event a row, by sequence ascending, UTF-8: the
hashed row and its hash (`EXPORT_COLUMNS`), then the reviewer's electronic signature the entry
records (`SIGNATURE_COLUMNS`: signature_name, signature_username, signature_time (UTC),
signature_meaning, signature_digest; empty when it records none). The signature cells are
details.signature's name, username, signed_at, meaning and digest: hashed as part of details, and
refused by verification when they say anything else. `created_at` is `format.utc_iso` (UTC,
microseconds); `details` is `format.canonical_json` text.

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
filter, `complete` (no filter: the chain links are checkable) and `generated_at`. With
AUDIT_SIGNING_KEY it also holds `signature`: {algorithm: HMAC-SHA256, key_id, mac}, the MAC over
`format.canonical_json` of the manifest without `signature` (audit/signing.py), so a manifest
rewritten to match a rewritten file is caught by anyone holding the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.utils import timezone

from promotions.audit.actions import AuditAction
from promotions.audit.filters import AuditFilter
from promotions.audit.format import (
    FILE_COLUMNS,
    GENESIS_HASH,
    NO_SIGNATURE,
    SIGNATURE_COLUMNS,
    number_token,
    signature_cells,
    stored_rows,
    string_token,
    utc_iso,
)
from promotions.audit.log import record, seal
from promotions.audit.signing import sign_manifest
from promotions.models import AuditChainHead, AuditEvent

EXPORT_FORMATS = ("csv", "jsonl")
_LINES_PER_WRITE = 1000  # rows per yielded block: few, large writes keep streaming cheap

CSV_FORMULA_ESCAPE = (
    "A cell that starts with = + - @ TAB CR or ' has one ' put in front; remove one leading ' "
    "from every cell that starts with ' before recomputing hashes."
)


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
        through_hash = stored.get(last, GENESIS_HASH)
    return ExportCut(filter=audit_filter, through=last, through_hash=through_hash, origin_hash=stored.get(1))


def export_filename(cut: ExportCut, *, fmt: str) -> str:
    scope = "filtered" if not cut.filter.is_empty else "all"
    return f"audit-log-{scope}-through-{cut.through}.{fmt}"


def record_export(*, actor, cut: ExportCut, fmt: str, via: str) -> AuditEvent:
    event = record(
        action=AuditAction.AUDIT_EXPORTED,
        actor=actor,
        meaning=f"Exported the audit log as {fmt.upper()} ({cut.filter.describe()}), "
        f"entries up to #{cut.through}",
        details={"format": fmt, "filter": cut.filter.as_dict(), "through": cut.through, "via": via},
    )
    # An export leaves the building: seal the log as it stood, so the copy and the database can
    # be held against each other later even if the seals after it are lost.
    seal()
    return event


def record_report_export(
    *, actor, report: str, meaning: str, details: dict, fmt: str, via: str
) -> AuditEvent:
    """A report drawn from the log (e.g. the holders of a stage at a time) leaves the building as
    an export does: recorded, and the log sealed as it stood."""
    event = record(
        action=AuditAction.AUDIT_EXPORTED,
        actor=actor,
        meaning=meaning,
        details={"format": fmt, "report": report, **details, "via": via},
    )
    seal()
    return event


def _export_rows(cut: ExportCut) -> tuple[Iterator[tuple], Callable[[Any], str], Callable[[Any], str]]:
    """The rows in column order, with the functions that turn their created_at and details into
    export text (format.stored_rows)."""
    return stored_rows(cut.filter.queryset().filter(sequence__lte=cut.through))


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


_NO_SIGNATURE_CSV = "," * len(SIGNATURE_COLUMNS) + "\r\n"


def _csv_signature(details_text: str) -> str:
    cells = signature_cells(details_text)
    if cells == NO_SIGNATURE:
        return _NO_SIGNATURE_CSV
    return "".join("," + _csv_cell(cell) for cell in cells) + "\r\n"


def csv_line(texts: tuple[str, ...]) -> str:
    """A row's 14 texts as the export's CSV record, with its signature cells, CRLF included."""
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
            f"{c(t[9])},{t[10]},{c(t[11])},{c(t[12])},{c(t[13])}{_csv_signature(t[11])}"
        )
    return (
        f"{t[0]},{t[1]},{t[2]},{t[3]},{t[4]},{t[5]},{t[6]},{t[7]},{t[8]},{t[9]},{t[10]},"
        f"{_csv_cell(t[11])},{t[12]},{t[13]}{_csv_signature(t[11])}"
    )


# A cell (other than the first) that starts with a character to escape; a NUL inside a cell
# can only make this match needlessly, sending the row down the per-cell path.
_ESCAPED_CELL_AFTER_NUL = re.compile("\x00[=+\\-@\t']").search


CSV_HEADER = ",".join(FILE_COLUMNS) + "\r\n"


def csv_record(cells) -> str:
    """Any other CSV file for auditors (a report), escaped and quoted as the log's export is."""
    return ",".join(_csv_cell(cell) for cell in cells) + "\r\n"


def jsonl_signature(details_text: str) -> str:
    """The signature keys of a JSON Lines line (after hash), their values from details."""
    cells = signature_cells(details_text)
    if cells == NO_SIGNATURE:
        return JSONL_NO_SIGNATURE
    return "".join(
        f',"{name}":{string_token(cell)}' for name, cell in zip(SIGNATURE_COLUMNS, cells, strict=True)
    )


JSONL_NO_SIGNATURE = "".join(f',"{name}":""' for name in SIGNATURE_COLUMNS)


def jsonl_line(texts: tuple[str, ...]) -> str:
    """A row's 14 texts as the export's JSON Lines line, with its signature keys, LF included."""
    # Equal to json.dumps(row, ensure_ascii=False, separators=(",", ":")) with the keys in column
    # order and details already canonical; spliced by hand for speed.
    s = string_token
    return (
        f'{{"sequence":{texts[0]},"created_at":{s(texts[1])},"actor_username":{s(texts[2])},'
        f'"actor_name":{s(texts[3])},"action":{s(texts[4])},"meaning":{s(texts[5])},'
        f'"model_name":{s(texts[6])},"version":{number_token(texts[7])},"from_stage":{s(texts[8])},'
        f'"to_stage":{s(texts[9])},"request_id":{number_token(texts[10])},"details":{texts[11]},'
        f'"prev_hash":{s(texts[12])},"hash":{s(texts[13])}{jsonl_signature(texts[11])}}}\n'
    )


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
    line_of = csv_line if fmt == "csv" else jsonl_line
    lines: list[str] = [CSV_HEADER] if fmt == "csv" else []
    rows, iso, canonical = _export_rows(cut)
    row = None
    for row in rows:
        lines.append(line_of(_row_texts(row, iso, canonical)))
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
        "generated_at": utc_iso(timezone.now()),
        "columns": list(FILE_COLUMNS),
    }
    if fmt == "csv":
        manifest["csv_formula_escape"] = CSV_FORMULA_ESCAPE
    return sign_manifest(manifest)


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
