"""The append-only, hash-chained audit log.

Each entry's hash is SHA-256 over a canonical JSON of the entry (everything an export carries)
plus the previous entry's hash. `record()` must run inside the transaction of the change it
records; it takes a row lock on the chain head, so concurrent writers queue instead of forking
the chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from promotions.models import AuditChainHead, AuditEvent

GENESIS_HASH = "0" * 64

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


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def payload_of(event: AuditEvent) -> dict[str, Any]:
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
    body = {name: payload[name] for name in HASHED_FIELDS}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def printed_name(user) -> str:
    if user is None:
        return "system"
    full = user.get_full_name().strip() if hasattr(user, "get_full_name") else ""
    return full or user.get_username()


def record(
    *,
    action: str,
    meaning: str,
    actor=None,
    model_name: str = "",
    version: int | None = None,
    from_stage: str = "",
    to_stage: str = "",
    request_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one entry. Joins the caller's transaction (or opens one)."""
    # Round-trip through JSON so the hash covers exactly what the database will return.
    details = json.loads(canonical_json(details or {}))
    with transaction.atomic():
        head = AuditChainHead.objects.select_for_update().get(pk=1)
        event = AuditEvent(
            sequence=head.last_sequence + 1,
            created_at=timezone.now(),
            actor_id=getattr(actor, "pk", None),
            actor_username=actor.get_username() if actor is not None else "",
            actor_name=printed_name(actor),
            action=action,
            model_name=model_name,
            version=version,
            from_stage=from_stage,
            to_stage=to_stage,
            request_id=request_id,
            meaning=meaning,
            details=details,
            prev_hash=head.last_hash,
        )
        event.hash = compute_hash(payload_of(event))
        event.save(force_insert=True)
        AuditChainHead.objects.filter(pk=1).update(last_sequence=event.sequence, last_hash=event.hash)
    return event


def record_denied(*, actor, what: str, reason: str, **context: Any) -> None:
    """Audit a refused permission in its own transaction: it survives the refusal's rollback."""
    with transaction.atomic(durable=not transaction.get_connection().in_atomic_block):
        record(
            action="auth.denied",
            actor=actor,
            meaning=f"Denied: {what} ({reason})",
            details={"reason": reason},
            **context,
        )


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    count: int
    head_hash: str
    first_bad_sequence: int | None = None
    reason: str = ""


def verify_payloads(
    payloads: Iterable[dict[str, Any]],
    *,
    expect_start: int | None = 1,
    expect_prev: str | None = GENESIS_HASH,
) -> ChainReport:
    """Walk entries in order; name the first whose hash, link or sequence is wrong.

    `expect_start`/`expect_prev` are None for a filtered export, where only each row's own
    hash can be checked, not the links between rows.
    """
    count = 0
    previous_hash = expect_prev
    previous_sequence = None if expect_start is None else expect_start - 1
    head = GENESIS_HASH
    for payload in payloads:
        count += 1
        sequence = payload.get("sequence")
        if compute_hash(payload) != payload.get("hash"):
            return ChainReport(False, count, head, sequence, "its hash does not match its content")
        if previous_sequence is not None and sequence != previous_sequence + 1:
            return ChainReport(
                False,
                count,
                head,
                sequence,
                f"sequence {sequence} follows {previous_sequence}: an entry is missing or out of order",
            )
        if previous_hash is not None and payload["prev_hash"] != previous_hash:
            return ChainReport(
                False, count, head, sequence, "its prev_hash does not match the entry before it"
            )
        if expect_start is not None:
            previous_sequence = sequence
            previous_hash = payload["hash"]
        head = payload["hash"]
    return ChainReport(True, count, head)


def iter_payloads(queryset=None, chunk_size: int = 5000) -> Iterator[dict[str, Any]]:
    queryset = AuditEvent.objects.all() if queryset is None else queryset
    for event in queryset.order_by("sequence").iterator(chunk_size=chunk_size):
        payload = payload_of(event)
        payload["hash"] = event.hash
        yield payload


def verify_database() -> ChainReport:
    report = verify_payloads(iter_payloads())
    if not report.ok:
        return report
    head = AuditChainHead.objects.get(pk=1)
    if head.last_sequence != report.count or head.last_hash != report.head_hash:
        return ChainReport(
            False,
            report.count,
            report.head_hash,
            head.last_sequence,
            f"the chain head records entry {head.last_sequence}, but the log ends at "
            f"{report.count}: entries at the end were removed",
        )
    return report
