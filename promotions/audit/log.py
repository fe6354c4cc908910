"""Writing the append-only, hash-chained audit log.

Each entry's hash is `format.compute_hash` of the entry (everything an export carries) and the
previous entry's hash. `record()` must run inside the transaction of the change it records; it
takes a row lock on the chain head, so concurrent writers queue instead of forking the chain.

With AUDIT_SIGNING_KEY (audit/signing.py), record() also keeps the chain head's MAC and writes a
seal every AUDIT_SEAL_EVERY entries; `seal()` (beat, and every export) seals the head between.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from common.operator import cli_operator
from promotions.audit import signing
from promotions.audit.actions import AuditAction
from promotions.audit.format import canonical_json, compute_hash, payload_of, utc_iso
from promotions.models import AuditChainHead, AuditEvent, AuditSeal

logger = logging.getLogger(__name__)

# The API token a request acts through, set by the API's authentication for the rest of that
# request (audit_context_middleware keeps it from outliving the request): every entry recorded
# meanwhile names the token, so an auditor can tell which pipeline acted as its owner.
_api_token: ContextVar[dict[str, Any] | None] = ContextVar("audit_api_token", default=None)


def acting_through_token(token) -> None:
    """Name `token` (an ApiToken) in every entry recorded for the rest of this request."""
    _api_token.set({"id": token.pk, "name": token.name, "prefix": token.prefix})


# The signed-in user of the web request being served: changes made through Django's own
# machinery (the admin saving a user's groups fires model signals, not our services) are
# recorded with the person who made them.
_request_user: ContextVar[Any] = ContextVar("audit_request_user", default=None)


def current_user():
    """The signed-in user of the request being served, or None (a command, a task, a shell)."""
    user = _request_user.get()
    return user if getattr(user, "is_authenticated", False) else None


def audit_context_middleware(get_response):
    """Let each request start with no API token named and its own user known, and take both
    away as it ends.

    Not `copy_context().run(...)`: Django keeps its database connections in context variables
    too, and a connection opened in a copied context escapes the end-of-request clean-up.
    """

    def middleware(request):
        before = _api_token.set(None)
        user_before = _request_user.set(getattr(request, "user", None))
        try:
            return get_response(request)
        finally:
            _request_user.reset(user_before)
            _api_token.reset(before)

    return middleware


def printed_name(user) -> str:
    if user is None:
        return "system"
    full = user.get_full_name().strip() if hasattr(user, "get_full_name") else ""
    return full or user.get_username()


def chain_head() -> tuple[int, str]:
    """(sequence, hash) of the last entry, as the chain head row records it."""
    return AuditChainHead.objects.values_list("last_sequence", "last_hash").get(pk=1)


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
    """Append one entry. Joins the caller's transaction (or opens one).

    `action` must be an AuditAction (or its value): ValueError otherwise, so the auditors' filter
    knows every action the log holds.
    """
    if action not in AuditAction.values:
        raise ValueError(f"'{action}' is not an audit action: add it to AuditAction first.")
    action = AuditAction(action).value  # the plain text, also when given the enum member
    # Round-trip through JSON so the hash covers exactly what the database will return.
    details = details or {}
    if (token := _api_token.get()) is not None:
        details = {**details, "api_token": token}
    if (operator := cli_operator()) is not None:
        # Whoever holds the database credentials may act as anyone from the command line: the
        # entry names the account and machine it really came from.
        details = {**details, "via": "cli", "cli": operator}
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
        key = signing.current_key()
        AuditChainHead.objects.filter(pk=1).update(
            last_sequence=event.sequence, last_hash=event.hash, **_head_mac(key, event.sequence, event.hash)
        )
        if key is not None and event.sequence % settings.AUDIT_SEAL_EVERY == 0:
            _write_seal(key, event.sequence, event.hash)
    return event


def _head_mac(key: signing.SigningKey | None, sequence: int, hash_: str) -> dict[str, str]:
    """The chain head's key_id and mac columns for (sequence, hash_); empty without a key."""
    if key is None:
        return {"key_id": "", "mac": ""}
    message = signing.head_message(sequence=sequence, hash_=hash_, key_id=key.key_id)
    return {"key_id": key.key_id, "mac": signing.mac_of(key, message)}


def _write_seal(key: signing.SigningKey, sequence: int, hash_: str) -> AuditSeal:
    created_at = timezone.now()
    message = signing.seal_message(
        sequence=sequence, hash_=hash_, created_at=utc_iso(created_at), key_id=key.key_id
    )
    seal_row = AuditSeal.objects.create(
        sequence=sequence,
        hash=hash_,
        created_at=created_at,
        key_id=key.key_id,
        mac=signing.mac_of(key, message),
    )
    # A copy outside the database: whoever can delete seals there cannot reach the log shipper.
    logger.info("audit seal: entry #%s hash %s key %s mac %s", sequence, hash_, key.key_id, seal_row.mac)
    return seal_row


def seal() -> AuditSeal | None:
    """Seal the chain head now (and give the head its MAC under the current key, if it lacks one).

    None without a key, or when the newest seal already covers the head: a quiet log does not
    grow a seal every few minutes.
    """
    key = signing.current_key()
    if key is None:
        return None
    with transaction.atomic():
        head = AuditChainHead.objects.select_for_update().get(pk=1)
        wanted = _head_mac(key, head.last_sequence, head.last_hash)
        if (head.key_id, head.mac) != (wanted["key_id"], wanted["mac"]):
            # The key was just configured or rotated: the same head, under the key in use now.
            AuditChainHead.objects.filter(pk=1).update(**wanted)
        newest = AuditSeal.objects.order_by("-id").values_list("sequence", "key_id").first()
        if head.last_sequence == 0 or newest == (head.last_sequence, key.key_id):
            return None
        return _write_seal(key, head.last_sequence, head.last_hash)


def record_denied(*, actor, what: str, reason: str, **context: Any) -> None:
    """Audit a refused permission in its own transaction: it survives the refusal's rollback."""
    with transaction.atomic(durable=not transaction.get_connection().in_atomic_block):
        record(
            action=AuditAction.AUTH_DENIED,
            actor=actor,
            meaning=f"Denied: {what} ({reason})",
            details={"reason": reason},
            **context,
        )
