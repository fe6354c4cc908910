"""Signatures by SSO users: a fresh authentication at the provider instead of a password.

A signed decision posted by an SSO user is kept in the session and the browser goes to the
provider with `prompt=login` and `max_age=0`; the callback checks the ID token (signature,
audience, issuer, nonce), that it names the same person, and that its `auth_time` is after the
decision was posted, then shows the kept decision to confirm. The confirming POST carries the
proof to services/signatures.py, once.
"""

from __future__ import annotations

import secrets
import time

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django_htmx.http import HttpResponseClientRedirect

from promotions.models import SsoIdentity

SESSION_PENDING = "sso_signature_pending"
SESSION_PROOF = "sso_signature_proof"
KEPT_FIELDS = ("decision", "comment", "meaning", "evidence_sha256", "signature_token")


def signs_with_provider(user) -> bool:
    """SSO accounts have no password here: they sign at their provider (when it is configured)."""
    return (
        settings.OIDC_ENABLED
        and not user.has_usable_password()
        and SsoIdentity.objects.filter(user=user, issuer=settings.OIDC_ISSUER).exists()
    )


def reauthentication_start(request: HttpRequest, *, request_id: int, fields: dict) -> HttpResponse:
    """Keep the decision and send the browser to the provider (htmx: as a full page)."""
    request.session[SESSION_PENDING] = {
        "request": request_id,
        "user": request.user.pk,
        "posted_at": int(time.time()),
        "key": secrets.token_hex(8),
        "fields": {name: str(fields.get(name) or "") for name in KEPT_FIELDS},
    }
    request.session.pop(SESSION_PROOF, None)
    target = f"/oidc/reauthenticate/{request_id}/"
    return HttpResponseClientRedirect(target) if request.htmx else redirect(target)


def pending_for(request: HttpRequest, request_id: int) -> dict | None:
    pending = request.session.get(SESSION_PENDING)
    if not isinstance(pending, dict) or pending.get("request") != request_id:
        return None
    if pending.get("user") != request.user.pk:
        return None
    return pending


def proof_record(request: HttpRequest, *, pending: dict, auth_time: int) -> None:
    request.session[SESSION_PROOF] = {
        "request": pending["request"],
        "user": pending["user"],
        "key": pending["key"],
        "auth_time": auth_time,
    }


def proof_take(request: HttpRequest, request_id: int, key: str) -> dict | None:
    """The proof for this decision, used up whether it fits or not."""
    proof = request.session.pop(SESSION_PROOF, None)
    request.session.pop(SESSION_PENDING, None)
    if (
        not isinstance(proof, dict)
        or proof.get("request") != request_id
        or proof.get("user") != request.user.pk
    ):
        return None
    if not key or proof.get("key") != key:
        return None
    return proof
