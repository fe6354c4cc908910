"""Writing the append-only, hash-chained audit log.

Each entry's hash is `format.compute_hash` of the entry (everything an export carries) and the
previous entry's hash. `record()` must run inside the transaction of the change it records; it
takes a row lock on the chain head, so concurrent writers queue instead of forking the chain.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

from django.db import transaction
from django.utils import timezone

from config.operator import cli_operator
from promotions.audit.actions import AuditAction
from promotions.audit.format import canonical_json, compute_hash, payload_of
from promotions.models import AuditChainHead, AuditEvent

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
        AuditChainHead.objects.filter(pk=1).update(last_sequence=event.sequence, last_hash=event.hash)
    return event


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
