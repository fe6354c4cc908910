"""Proving the audit log untampered: an exported file against its manifest (`verify_export`),
the database's chain (`verify_database`), and the audit page's cached view of it (`chain_status`).

Every row's hash is recomputed with `format`'s hashers, which agree with `format.compute_hash`.
Large files and logs are checked in parts by forked worker processes; at the first doubt the
one-process walk runs instead and names the bad row, so the parallel path can only accept what
the one-process walk accepts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.cache import cache
from django.db import DatabaseError, connections
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from promotions.audit import signing
from promotions.audit.actions import AuditAction
from promotions.audit.exports import (
    CSV_HEADER,
    EXPORT_FORMATS,
    JSONL_NO_SIGNATURE,
    csv_line,
    jsonl_line,
    manifest_path,
)
from promotions.audit.format import (
    EXPORT_COLUMNS,
    FILE_COLUMNS,
    GENESIS_HASH,
    SIGNATURE_COLUMNS,
    canonical_json,
    hash_of_line_tokens,
    hash_of_texts,
    hash_of_values,
    signature_cells,
    stored_rows,
    utc_iso,
)
from promotions.audit.log import record
from promotions.models import AuditChainHead, AuditEvent, AuditSeal


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    count: int
    head_hash: str
    first_bad_sequence: int | None = None
    reason: str = ""
    # How far the keyed evidence reaches ("signed …", "unsigned …"): said, not part of the verdict.
    note: str = field(default="", compare=False)


# --- the audit page's view of the chain ---------------------------------------------------------

CHAIN_STATUS_TTL = 600
CHAIN_FULL_WALK_EVERY = 3600
CHAIN_PREFIX_KEY = "audit-chain-verified-prefix"


def chain_status(head: tuple[int, str]) -> ChainReport:
    """Whether the chain verifies up to `head` (from `log.chain_head()`), as verify_database.

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
        report = _verify_database_after(prefix[0], prefix[1], parallel=False)
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


def record_verification(report: ChainReport) -> AuditEvent:
    """Put a passed walk of the whole chain on the record (`verify_audit_log --record`, as the
    scheduled verification runs it; a plain run records nothing): `/metrics` reports the time
    since the last one, so monitoring notices when nobody verifies the log any more.

    Only a passed walk: an entry appended to a broken chain would sign a new head over the break
    (with AUDIT_SIGNING_KEY), and a failure is what the command's exit status and output are for.
    """
    if not report.ok:
        raise ValueError("Only a chain that verified is recorded as verified.")
    return record(
        action=AuditAction.AUDIT_VERIFIED,
        meaning=f"Verified the audit log: {report.count} entries, head {report.head_hash}",
        details={"entries": report.count, "head": report.head_hash},
    )


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
    """hash_of_texts splices version and request_id into JSON as they are, so they must be numbers.

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
    if header and (next(reader, None) != list(FILE_COLUMNS) or (exact and "".join(raw) != CSV_HEADER)):
        raise _BadRow(None, "the file does not start with the export's header row")
    raw.clear()
    width, hashed = len(FILE_COLUMNS), len(EXPORT_COLUMNS)
    for position, cells in enumerate(reader, start=1):
        if len(cells) != width:
            raise _BadRow(None, f"row {position} of the file has {len(cells)} cells, not {width}")
        texts = _unescaped(cells)
        sequence = _sequence_of(texts, position)
        _check_numbers(texts, sequence)
        _check_signature(texts[hashed:], texts[11], sequence)
        texts = texts[:hashed]
        if exact:
            if csv_line(texts) != "".join(raw):
                raise _BadRow(
                    sequence,
                    "the row is not written the way the export writes it (its quoting, escaping "
                    "or line ending was changed)",
                )
            raw.clear()
        yield sequence, hash_of_texts(texts), texts[12], texts[13]


def _check_signature(cells: tuple[str, ...], details_text: str, sequence: int) -> None:
    """The signature cells are a reading of details.signature: a file saying otherwise is refused."""
    if tuple(cells) != signature_cells(details_text):
        raise _BadRow(sequence, "its signature columns do not say what its details record")


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
# An entry without a signature: its signature keys are all empty (a signed one takes the long way).
_LINE_TAIL = re.compile(
    r',"prev_hash":"([0-9a-f]{64})","hash":"([0-9a-f]{64})"' + re.escape(JSONL_NO_SIGNATURE) + r"\}\n\Z"
)
_LINE_TAIL_LENGTH = 155 + len(JSONL_NO_SIGNATURE)


def _jsonl_rows(handle, *, exact: bool) -> Iterator[_Row]:
    """(sequence, recomputed hash, prev_hash, hash) of each line; `exact` as for _csv_rows."""
    match_head, match_tail = _LINE_HEAD.match, _LINE_TAIL.match
    for position, line in enumerate(handle, start=1):
        if not exact:
            head = match_head(line)
            cut = len(line) - _LINE_TAIL_LENGTH
            tail = match_tail(line, cut) if head is not None and head.end() < cut else None
            details = line[head.end() : cut] if tail is not None else ""
            if tail is not None and '"signature":{' not in details:
                # The line is in the export's layout, recording no signature: hash its tokens
                # without decoding them.
                t, (prev_hash, hash_) = head.groups(), tail.groups()
                yield int(t[0]), hash_of_line_tokens(t, details, prev_hash), prev_hash, hash_
                continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise _BadRow(None, f"row {position} of the file is not JSON: {exc}") from None
        if type(row) is not dict or tuple(row) != FILE_COLUMNS:
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
            canonical_json(row["details"]),
            row["prev_hash"],
            row["hash"],
        )
        if not all(type(text) is str for text in texts):
            raise _BadRow(sequence, "a text column holds something other than text")
        _check_signature(tuple(row[name] for name in SIGNATURE_COLUMNS), texts[11], sequence)
        if exact and jsonl_line(texts) != line:
            raise _BadRow(
                sequence, "the row is not written the way the export writes it (spacing or key order)"
            )
        yield sequence, hash_of_texts(texts), texts[12], texts[13]


@dataclass
class _Walk:
    count: int = 0
    first_sequence: int | None = None
    last_sequence: int | None = None
    last_hash: str | None = None


def _walk(rows: Iterator[_Row], walk: _Walk, *, complete: bool, announced: int) -> None:
    """Check each row's hash, order and (complete exports) links; raise _BadRow at the first bad one."""
    previous, previous_hash = (0, GENESIS_HASH) if complete else (None, None)
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
    previous, previous_hash = (0, GENESIS_HASH) if complete else (None, None)
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


def verify_export(path: str | os.PathLike, *, check_database: bool = True) -> ChainReport:
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
    problem = _manifest_problem(manifest) or signing.manifest_signature_problem(manifest)
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
            return ChainReport(False, walk.count, walk.last_hash or GENESIS_HASH, bad.sequence, bad.reason)
        except csv.Error as exc:
            return _broken(None, f"the file is not valid CSV {_after(walk)} ({exc})")
        except UnicodeDecodeError as exc:
            return _broken(None, f"the file is not UTF-8 {_after(walk)} ({exc.reason})")
    head = walk.last_hash or GENESIS_HASH
    if actual != manifest["sha256"]:
        return ChainReport(
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
            return ChainReport(False, walk.count, head, *disagreement)
    return ChainReport(True, walk.count, head, note=_export_note(manifest))


def _export_note(manifest: dict[str, Any]) -> str:
    signature = manifest.get("signature")
    if not signing.is_signing():
        return signing.describe() + ("; the manifest's signature was not checked" if signature else "")
    return f"manifest signature checks (key id {signature['key_id']})"


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
    last = AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0
    if last < head["sequence"]:
        # The log had reached the export's head when the export was cut, and no longer has: a
        # backup restored over it, or entries removed behind the database's back.
        return (
            last + 1,
            f"the database ends at entry #{last}, but it held entries up to #{head['sequence']} "
            f"when this export was cut: entries #{last + 1} to #{head['sequence']} are missing from "
            "the database (restored from an earlier backup, or removed)",
        )
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


def _broken(sequence: int | None, reason: str) -> ChainReport:
    return ChainReport(False, 0, GENESIS_HASH, sequence, reason)


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


def verify_database(*, parallel: bool = True) -> ChainReport:
    """Walk the whole chain by sequence; name the first entry whose hash, sequence or link is
    wrong, or notice entries removed from the end (the chain head records more).

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
    return _verify_database_after(0, GENESIS_HASH, parallel=parallel)


def _verify_database_after(after: int, after_hash: str, *, parallel: bool) -> ChainReport:
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
        return ChainReport(False, count, head_hash, walk.bad_sequence, walk.reason)
    if head.last_sequence != count or head.last_hash != head_hash:
        return ChainReport(
            False,
            count,
            head_hash,
            head.last_sequence,
            f"the chain head records entry {head.last_sequence}, but the log ends at {count}: "
            "entries at the end were removed",
        )
    bad_sequence, reason, note = _check_keyed_evidence(head, count)
    if reason:
        return ChainReport(False, count, head_hash, bad_sequence, reason, note)
    return ChainReport(True, count, head_hash, note=note)


def _check_keyed_evidence(head: AuditChainHead, count: int) -> tuple[int | None, str, str]:
    """(bad sequence, reason, note): the chain head's MAC and every seal, under the configured keys.

    A chain that checks can still be a rewrite, its hashes recomputed by whoever could write the
    database; this is what such a rewrite cannot fake without the key. The head's MAC catches
    entries cut off the end (or replaced) with the head moved to match; each seal, an entry at or
    before a sealed sequence that is no longer the one sealed, or no longer there. Seals first:
    the oldest seal a rewrite broke is nearest the entry it changed.
    """
    if not signing.is_signing():
        unchecked = AuditSeal.objects.count()
        return None, "", signing.describe() + (f"; {unchecked} seal(s) not checked" if unchecked else "")
    entry_hash = AuditEvent.objects.filter(sequence=OuterRef("sequence")).values("hash")[:1]
    seals = (
        AuditSeal.objects.order_by("id")
        .annotate(entry_hash=Subquery(entry_hash))
        .values_list("id", "sequence", "hash", "created_at", "key_id", "mac", "entry_hash")
    )
    sealed, sealed_through = 0, 0
    for seal_id, sequence, hash_, created_at, key_id, mac, stored_hash in seals.iterator():
        sealed += 1
        when = utc_iso(created_at)
        message = signing.seal_message(sequence=sequence, hash_=hash_, created_at=when, key_id=key_id)
        problem = signing.mac_problem(message, mac)
        if problem:
            return sequence, f"seal {seal_id} of entry #{sequence} does not check: {problem}", ""
        if stored_hash is None:
            return (
                sequence,
                f"seal {seal_id} (made {when}) vouches for entry #{sequence}, which no longer exists: "
                "entries at the end were removed",
                "",
            )
        if stored_hash != hash_:
            return (
                sequence,
                f"seal {seal_id} (made {when}) vouches for hash {hash_} at entry #{sequence}, which "
                f"now has {stored_hash}: the log was rewritten and its hashes recomputed",
                "",
            )
        sealed_through = max(sealed_through, sequence)
    if head.mac:
        message = signing.head_message(sequence=head.last_sequence, hash_=head.last_hash, key_id=head.key_id)
        problem = signing.mac_problem(message, head.mac)
        if problem:
            return (
                head.last_sequence,
                f"the chain head (entry #{head.last_sequence}) does not check: {problem}; the head "
                "row was rewritten (entries at the end removed or replaced)",
                "",
            )
    if not head.mac and head.last_sequence:
        if sealed:
            return (
                head.last_sequence,
                "the chain head carries no MAC though the log is sealed: the head row was rewritten",
                "",
            )
        return (
            None,
            "",
            f"{signing.describe()}; nothing signed yet (the key is new: the next entry or seal signs)",
        )
    note = f"{signing.describe()}: the chain head's MAC checks; {sealed} seal(s) check"
    if sealed_through:
        note += f", the newest through entry #{sealed_through}"
    return None, "", note


def _walk_database(
    after: int, after_hash: str | None, through: int | None = None, *, using: str | None = None
) -> _DatabaseWalk:
    """Walk the entries after `after` (up to `through`, or the end) by sequence; stop at the first
    bad one. `after_hash` None: a part of the log, its first entry's link left to the caller.

    Each entry is checked as verify_database always checked it, in the same order: its
    hash (format.compute_hash of its content), then its sequence (one more than the entry
    before's), then its prev_hash (the entry before's hash).
    """
    events = AuditEvent.objects.using(using) if using else AuditEvent.objects.all()
    if after:  # from the start: every row, whatever its sequence, as verify_database always did
        events = events.filter(sequence__gt=after)
    if through is not None:
        events = events.filter(sequence__lte=through)
    rows, iso, canonical = stored_rows(events)
    walk = _DatabaseWalk(after, first_prev=after_hash)
    count, previous, previous_hash = 0, after, after_hash
    for row in rows:
        count += 1
        sequence, prev_hash, hash_ = row[0], row[12], row[13]
        try:
            recomputed = hash_of_values(row, iso, canonical)
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
