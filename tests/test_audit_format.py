"""Every fast way of hashing an audit row agrees with compute_hash, on any content.

Exports and verification never build a payload dict: they splice the canonical JSON from a row's
values, an export's texts or a JSON Lines row's tokens. Hypothesis throws rows at them with the
content that breaks hand-made JSON: quotes, backslashes, control characters, characters outside
the Basic Multilingual Plane, NULL numbers, nested details, any microsecond.
"""

import csv
import io
import json
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promotions import audit
from promotions.audit import exports, filters, format, verify
from promotions.models import AuditChainHead, AuditEvent

# Surrogates are left out: no entry can hold one (it cannot be written as UTF-8).
any_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
# The characters that need escaping in JSON or quoting in CSV, often enough to matter.
awkward_text = st.text(
    st.sampled_from(['"', "\\", ",", "'", "=", "\n", "\r", "\t", "\x00", "\x1f", "\u2028", "é", "😀", "a"]),
    max_size=12,
)
text = st.one_of(any_text, awkward_text)
stored_text = text.map(lambda value: value.replace("\x00", ""))  # PostgreSQL refuses NUL in text


def details(strings):
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), strings)
    return st.dictionaries(
        strings,
        st.recursive(
            scalar,
            lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(strings, inner, max_size=4)),
            max_leaves=12,
        ),
        max_size=5,
    )


moments = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]),
)
hex_hash = st.text("0123456789abcdef", min_size=64, max_size=64)


def signatures(strings):
    """details.signature as a signed review records it (its texts as awkward as any)."""
    keys = ("name", "username", "signed_at", "meaning", "digest", "key_id", "seal")
    return st.fixed_dictionaries({key: strings for key in keys})


def details_maybe_signed(strings):
    return st.one_of(
        details(strings),
        st.builds(lambda d, s: {**d, "signature": s}, details(strings), signatures(strings)),
    )


def payloads(strings=text):
    return st.fixed_dictionaries(
        {
            "sequence": st.integers(1, 2**62),
            "created_at": moments,
            "actor_username": strings,
            "actor_name": strings,
            "action": strings,
            "model_name": strings,
            "version": st.one_of(st.none(), st.integers(0, 2**31 - 1)),
            "from_stage": strings,
            "to_stage": strings,
            "request_id": st.one_of(st.none(), st.integers(0, 2**62)),
            "meaning": strings,
            "details": details_maybe_signed(strings),
            "prev_hash": hex_hash,
        }
    )


def hashed(payload: dict) -> dict:
    """The payload as compute_hash sees it (created_at as text), with its hash."""
    payload = {**payload, "created_at": audit.utc_iso(payload["created_at"])}
    payload["details"] = json.loads(audit.canonical_json(payload["details"]))
    return {**payload, "hash": audit.compute_hash(payload)}


def value_row(payload: dict) -> tuple:
    """The row as stored_rows fetches it on PostgreSQL (a datetime and a dict)."""
    return tuple(payload[name] for name in format.EXPORT_COLUMNS[:-1]) + (hashed(payload)["hash"],)


def export_texts(row: dict) -> tuple[str, ...]:
    """The 14 cells an export writes for a row."""
    return tuple(
        "" if row[name] is None else audit.canonical_json(row[name]) if name == "details" else str(row[name])
        for name in format.EXPORT_COLUMNS
    )


@settings(max_examples=400, deadline=None)
@given(payloads())
def test_every_fast_hash_of_a_row_is_compute_hash(payload):
    row = hashed(payload)
    expected = row["hash"]
    # the database walk, from values as PostgreSQL returns them and as SQLite keeps them
    assert format.hash_of_values(value_row(payload), audit.utc_iso, audit.canonical_json) == expected
    moment = payload["created_at"].astimezone(UTC).replace(tzinfo=None)
    sqlite_row = list(value_row(payload))
    sqlite_row[1], sqlite_row[11] = str(moment), json.dumps(payload["details"])  # as Django writes them
    assert (
        format.hash_of_values(tuple(sqlite_row), format._iso_from_sqlite_text, format._canonical_from_text)
        == expected
    )
    # an export's cells, and the same cells read back from a CSV file
    texts = export_texts(row)
    assert format.hash_of_texts(texts) == expected
    csv_file = io.StringIO(exports.CSV_HEADER + exports.csv_line(texts), newline="")
    assert [recomputed for _, recomputed, _, _ in verify._csv_rows(csv_file, exact=True)] == [expected]
    # a JSON Lines row, hashed from its tokens without decoding it
    line = exports.jsonl_line(texts)
    signature = row["details"].get("signature") or {}
    cells = [signature.get(key, "") for key in ("name", "username", "signed_at", "meaning", "digest")]
    assert json.loads(line) == {**row, **dict(zip(format.SIGNATURE_COLUMNS, cells, strict=True))}
    assert list(csv.reader(io.StringIO(exports.csv_line(texts), newline="")))[0][-5:] == [
        "'" + c if c[:1] in "=+-@\t\r'" and c else c for c in cells
    ]
    if not signature:
        head = verify._LINE_HEAD.match(line)
        cut = len(line) - verify._LINE_TAIL_LENGTH
        tail = verify._LINE_TAIL.match(line, cut)
        assert head is not None and tail is not None
        assert format.hash_of_line_tokens(head.groups(), line[head.end() : cut], tail.group(1)) == expected
    assert [h for _, h, _, _ in verify._jsonl_rows(io.StringIO(line, newline=""), exact=False)] == [expected]
    assert [h for _, h, _, _ in verify._jsonl_rows(io.StringIO(line, newline=""), exact=True)] == [expected]


@pytest.mark.django_db
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(payloads(stored_text), min_size=1, max_size=6))
def test_a_file_export_of_any_rows_verifies(rows):
    # One transaction an example, rolled back at its end: the log is append-only, and each
    # example must start from the same chain.
    with transaction.atomic():
        head = AuditChainHead.objects.get(pk=1)
        sequence, previous = head.last_sequence, head.last_hash
        events = []
        for payload in rows:
            sequence += 1
            event = AuditEvent(**{**payload, "sequence": sequence, "prev_hash": previous})
            event.details = json.loads(audit.canonical_json(event.details))
            event.hash = audit.compute_hash(audit.payload_of(event))
            previous = event.hash
            events.append(event)
        AuditEvent.objects.bulk_create(events)
        AuditChainHead.objects.filter(pk=1).update(last_sequence=sequence, last_hash=previous)
        assert audit.verify_database(parallel=False).ok
        with tempfile.TemporaryDirectory() as directory:
            for fmt in exports.EXPORT_FORMATS:
                path = Path(directory) / f"log.{fmt}"
                manifest = exports.write_export(path, cut=exports.export_cut(filters.AuditFilter()), fmt=fmt)
                assert manifest["chain_head"] == previous
                report = verify.verify_export(path)
                assert report.ok, report.reason
                assert report.count == sequence
        transaction.set_rollback(True)
