"""The canonical audit row and its one hash.

An entry's hash is SHA-256 over `canonical_json` of its HASHED_FIELDS (`compute_hash`); `prev_hash`
is among them, which chains the entries. Exports and verification hash millions of rows and cannot
afford a payload dict and a `json.dumps` for each: they hash through `hash_of_values`,
`hash_of_texts` and `hash_of_line_tokens`, which splice the same canonical JSON from a row's
JSON tokens. Those three are generated from `canonical_json`'s own output (see `_compile_hasher`),
so the hashed text is defined once, here, and tests/test_audit_format.py checks them against
`compute_hash` on random rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

from django.db import connections
from django.db.models import F, QuerySet, TextField
from django.db.models.functions import Cast
from django.utils.dateparse import parse_datetime

from promotions.models import AuditEvent

GENESIS_HASH = "0" * 64  # the prev_hash of entry #1

HASHED_FIELDS = (
    "sequence",
    "created_at",
    "actor_username",
    "actor_name",
    "action",
    "model_name",
    "version",
    "from_stage",
    "to_stage",
    "request_id",
    "meaning",
    "details",
    "prev_hash",
)
# Hashed fields that hold an integer or NULL; `details` holds a JSON object; the others text.
INTEGER_FIELDS = frozenset({"sequence", "version", "request_id"})

# The row as exports carry it and verification reads it back: the hashed fields and the hash.
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

# After the row, the files carry a reviewer's electronic signature, read from details.signature
# (which the hash covers): who signed, when (UTC), meaning what, over which evidence digest.
# Empty for an entry that records no signature. They are not hashed themselves; verification
# refuses a file whose signature cells do not say what the row's details say.
SIGNATURE_COLUMNS = (
    "signature_name",
    "signature_username",
    "signature_time",
    "signature_meaning",
    "signature_digest",
)
_SIGNATURE_KEYS = ("name", "username", "signed_at", "meaning", "digest")
NO_SIGNATURE = ("",) * len(SIGNATURE_COLUMNS)
# Every column of an export file, in order.
FILE_COLUMNS = (*EXPORT_COLUMNS, *SIGNATURE_COLUMNS)

# Equal to json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False), which
# builds this encoder anew on every call; exports call it once a row.
canonical_json: Callable[[Any], str] = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False
).encode

# A text as canonical_json spells it (the encoder above uses this very function for strings).
string_token: Callable[[str], str] = encode_basestring


def signature_cells(details_text: str) -> tuple[str, ...]:
    """The SIGNATURE_COLUMNS cells of a row, from its details as canonical JSON text."""
    # Most entries record no signature: one substring test spares decoding their details.
    if '"signature":{' not in details_text:
        return NO_SIGNATURE
    try:
        signature = json.loads(details_text).get("signature")
    except (ValueError, AttributeError):
        return NO_SIGNATURE
    if not isinstance(signature, dict):
        return NO_SIGNATURE
    return tuple(value if isinstance(value := signature.get(key), str) else "" for key in _SIGNATURE_KEYS)


def integer_token(value: Any) -> str:
    """An integer column as canonical_json spells it (null for NULL); anything else is refused."""
    if value is None:
        return "null"
    if type(value) is not int:
        raise TypeError("not an integer")  # on SQLite a column can hold any type
    return str(value)


def number_token(text: str) -> str:
    """An integer cell of an export ('' for NULL) as canonical_json spells it."""
    return text or "null"


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def payload_of(event: AuditEvent) -> dict[str, Any]:
    """The hashed fields of an entry, as JSON values."""
    return {
        "sequence": event.sequence,
        "created_at": utc_iso(event.created_at),
        "actor_username": event.actor_username,
        "actor_name": event.actor_name,
        "action": event.action,
        "model_name": event.model_name,
        "version": event.version,
        "from_stage": event.from_stage,
        "to_stage": event.to_stage,
        "request_id": event.request_id,
        "meaning": event.meaning,
        "details": event.details,
        "prev_hash": event.prev_hash,
    }


def compute_hash(payload: dict[str, Any]) -> str:
    """The entry's hash: the one definition every other way of hashing a row must agree with."""
    body = {name: payload[name] for name in HASHED_FIELDS}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


# --- the same hash, spliced from a row's tokens -------------------------------------------------

_HOLE = "\x00hole:"  # marks a value's place; no key or token of the hashed JSON contains a NUL


def _compile_hasher(
    name: str, parameters: str, token: Callable[[str, int], str], doc: str, **scope: Any
) -> Callable[..., str]:
    """Compile `name(parameters)`, returning compute_hash's hash of a row given in another shape.

    Its body is one f-string: canonical_json's own text for a payload of markers, each marker
    replaced by `token(field, column)`, the f-string source of that field's JSON token (`column`
    is the field's place in EXPORT_COLUMNS). So key order, separators and braces are
    canonical_json's and stated nowhere else, while the hot loops still run one f-string a row, as
    code written out by hand would: str.format or % over the same template cost twice as much,
    which at a million rows is most of the verification's time budget.
    """
    text = canonical_json({field: _HOLE + field for field in HASHED_FIELDS})
    text = text.replace("{", "{{").replace("}", "}}")
    for field in HASHED_FIELDS:
        text = text.replace(canonical_json(_HOLE + field), token(field, EXPORT_COLUMNS.index(field)), 1)
    if "hole:" in text or "\\" in text or "'" in text:
        raise ImportError(f"cannot build {name} from canonical_json: {text}")
    source = f"def {name}({parameters}):\n    return _sha256(f'{text}'.encode()).hexdigest()\n"
    namespace: dict[str, Any] = {"_sha256": hashlib.sha256, **scope}
    # Generated source, from constants of this module only: nothing outside reaches it.
    exec(compile(source, f"<{__name__}.{name}>", "exec"), namespace)  # noqa: S102
    function = namespace[name]
    function.__module__, function.__doc__ = __name__, doc
    return function


def _value_token(field: str, column: int) -> str:
    if field == "created_at":
        return f"{{s(iso(row[{column}]))}}"
    if field == "details":
        return f"{{canonical(row[{column}])}}"
    if field in INTEGER_FIELDS:
        return f"{{i(row[{column}])}}"
    return f"{{s(row[{column}])}}"


def _text_token(field: str, column: int) -> str:
    if field == "details":
        return f"{{t[{column}]}}"  # already canonical_json text; a cell that is not fails the hash
    if field in INTEGER_FIELDS:
        return f"{{n(t[{column}])}}"
    return f"{{s(t[{column}])}}"


def _line_token(field: str, column: int) -> str:
    if field == "details":
        return "{details}"
    if field == "prev_hash":
        return '"{prev_hash}"'  # 64 hex digits: the JSON string needs only its quotes
    return f"{{t[{column}]}}"


hash_of_values: Callable[[tuple, Callable[[Any], str], Callable[[Any], str]], str] = _compile_hasher(
    "hash_of_values",
    "row, iso, canonical",
    _value_token,
    """compute_hash of a stored row (`stored_rows`: EXPORT_COLUMNS order), given the functions that
    turn its created_at and details into canonical text. TypeError (or ValueError, AttributeError)
    for a value Django could not have written.""",
    s=string_token,
    i=integer_token,
)

hash_of_texts: Callable[[tuple[str, ...]], str] = _compile_hasher(
    "hash_of_texts",
    "t",
    _text_token,
    """compute_hash of a row given as the 14 texts of an export's cells (numbers as digits, NULL
    as '', details as canonical_json text).""",
    s=string_token,
    n=number_token,
)

hash_of_line_tokens: Callable[[tuple[str, ...], str, str], str] = _compile_hasher(
    "hash_of_line_tokens",
    "t, details, prev_hash",
    _line_token,
    """compute_hash of a JSON Lines row from its JSON tokens as they stand: `t` the tokens of
    sequence to request_id (EXPORT_COLUMNS order), `details` its token, `prev_hash` the hex
    digits. A token not spelled as canonical_json spells it fails the hash.""",
)


# --- stored rows as canonical texts -------------------------------------------------------------

CHUNK_SIZE = 2000  # rows a database round trip


def stored_rows(
    events: QuerySet[AuditEvent],
) -> tuple[Iterator[tuple], Callable[[Any], str], Callable[[Any], str]]:
    """(rows in EXPORT_COLUMNS order by sequence, iso, canonical): the functions turn a row's
    created_at and details into their canonical text (utc_iso and canonical_json of the values)."""
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
        iso, canonical = utc_iso, canonical_json
    return events.values_list(*columns).iterator(chunk_size=CHUNK_SIZE), iso, canonical


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
    return canonical_json(value)


def _iso_from_sqlite_text(text: str) -> str:
    """utc_iso of a datetime as Django keeps it in SQLite: naive UTC, str() of it."""
    if len(text) == 26:  # 2026-11-25 14:02:03.123456
        return f"{text[:10]}T{text[11:]}+00:00"
    if len(text) == 19:  # str() leaves out a zero microsecond
        return f"{text[:10]}T{text[11:]}.000000+00:00"
    return utc_iso(parse_datetime(text).replace(tzinfo=UTC))
