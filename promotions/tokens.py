"""Personal API tokens: created and revoked here, looked up by their SHA-256 only.

A token is `prm_` followed by 43 URL-safe characters (256 random bits). The database keeps its
SHA-256 and a short prefix for people to recognise it; the token itself is shown once.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from promotions import audit
from promotions.models import ApiToken
from promotions.text import clean_text

TOKEN_PREFIX = "prm_"
PREFIX_LENGTH = 12  # "prm_" and 8 random characters: enough to tell tokens apart on a page
MAX_NAME = 100
# Writing last_used_at on every call would turn each read into a write; a minute is precise
# enough to tell a live token from a forgotten one.
TOUCH_EVERY = timedelta(seconds=60)


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_create(*, user, name: str = "", via: str = "web") -> tuple[ApiToken, str]:
    """A new token for `user`; returns the row and the token, which is not stored anywhere."""
    name = clean_text(name, what="token name", max_length=MAX_NAME) or "API token"
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=raw[:PREFIX_LENGTH],
            token_hash=hash_token(raw),
            created_at=timezone.now(),
        )
        audit.record(
            action="token.created",
            actor=user,
            meaning=f"API token '{name}' ({token.prefix}…) created for {user.get_username()}",
            details={"token_id": token.pk, "prefix": token.prefix, "name": name, "via": via},
        )
    return token, raw


def api_token_revoke(*, token: ApiToken, user) -> ApiToken:
    """Revoke one of `user`'s tokens (idempotent: revoking twice keeps the first time)."""
    with transaction.atomic():
        changed = ApiToken.objects.filter(pk=token.pk, user=user, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if changed:
            audit.record(
                action="token.revoked",
                actor=user,
                meaning=f"API token '{token.name}' ({token.prefix}…) revoked",
                details={"token_id": token.pk, "prefix": token.prefix, "name": token.name},
            )
    token.refresh_from_db()
    return token


def token_authenticate(raw: str) -> ApiToken | None:
    """The live token for `raw` with its active user, or None. Records the use."""
    if not raw or not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=hash_token(raw), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= TOUCH_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def tokens_of(user):
    """Live tokens first, newest first; then the revoked ones."""
    return ApiToken.objects.filter(user=user).order_by(
        F("revoked_at").desc(nulls_first=True), "-created_at", "-id"
    )
