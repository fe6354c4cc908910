"""The append-only, hash-chained audit log.

Each entry's hash is SHA-256 over a canonical JSON of the entry (everything an export carries)
plus the previous entry's hash. `record()` must run inside the transaction of the change it
records; it takes a row lock on the chain head, so concurrent writers queue instead of forking
the chain.
"""

from __future__ import annotations

import hashlib
import json
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from promotions.models import AuditChainHead, AuditEvent

GENESIS_HASH = "0" * 64

# The API token a request acts through, set by the API's authentication for the rest of that
# request (audit_context_middleware keeps it from outliving the request): every entry recorded
# meanwhile names the token, so an auditor can tell which pipeline acted as its owner.
_api_token: ContextVar[dict[str, Any] | None] = ContextVar("audit_api_token", default=None)


def acting_through_token(token) -> None:
    """Name `token` (an ApiToken) in every entry recorded for the rest of this request."""
    _api_token.set({"id": token.pk, "name": token.name, "prefix": token.prefix})


def audit_context_middleware(get_response):
    """Let each request start with no API token named, and take its own away as it ends.

    Not `copy_context().run(...)`: Django keeps its database connections in context variables
    too, and a connection opened in a copied context escapes the end-of-request clean-up.
    """

    def middleware(request):
        before = _api_token.set(None)
        try:
            return get_response(request)
        finally:
            _api_token.reset(before)

    return middleware


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
    details = details or {}
    if (token := _api_token.get()) is not None:
        details = {**details, "api_token": token}
    details = json.loads(canonical_json(details))
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


def verify_database(*, parallel: bool = True) -> ChainReport:
    """Walk the whole chain; name the first entry whose hash, sequence or link is wrong, or
    notice entries removed from the end (the chain head records more).

    See promotions.exports.verify_database, which does the work: values_list rows hashed without a
    model instance, and for a large log (outside a transaction, with `parallel`) worker processes
    that each walk a part.
    """
    from promotions import exports  # exports imports this module

    return exports.verify_database(parallel=parallel)
