"""Electronic signatures on decisions, for stages that require them (21 CFR 11.50, 11.200 style).

A signed decision is made on the request page: the reviewer types their password again and says
what the signature means. The form carries a one-time token (`signature_form_token`) binding
the user, the request and a random nonce, with its issue time; `signature_check` refuses a token
that is forged, old, for someone or something else, or used before, so a decision form posted
again (the same CSRF token, the same nonce) signs nothing. The password goes through Django's
`authenticate`, so a wrong one is counted by django-axes exactly as a failed sign-in and locks
the account after as many failures.

The proof that comes out is handed to `review_approve` / `review_reject`, which write the
signature on the review and in its audit entry (`signature_record`). The API has no way to
make one: a token proves the pipeline, not the person (decisions.py refuses it there).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import authenticate
from django.core import signing as django_signing
from django.db import IntegrityError, transaction
from django.utils import timezone

from promotions import audit
from promotions.audit import signing
from promotions.errors import SignatureRefused
from promotions.models import REJECTION_MEANING, PromotionRequest, Review, SignatureNonce

_SALT = "promotions.decision-signature"


@dataclass(frozen=True)
class SignatureProof:
    """The signer re-authenticated for this one decision and chose its meaning."""

    user_id: int
    request_id: int
    meaning: str


def meanings_for(stage, decision: str) -> list[str]:
    """What a signature on `decision` may mean on `stage`: the stage's list, or 'Rejected'."""
    return [REJECTION_MEANING] if decision == Review.Decision.REJECT else stage.approval_meanings()


def signature_form_token(*, user, request_id: int) -> str:
    """A fresh one-time token for the decision form of `request_id`, shown to `user`."""
    value = {"u": user.pk, "r": request_id, "n": secrets.token_hex(16)}
    return django_signing.TimestampSigner(salt=_SALT).sign_object(value)


def _max_age() -> timedelta:
    return timedelta(seconds=settings.SIGNATURE_FORM_MAX_AGE_SECONDS)


def _token_consume(token: str, *, user, promotion: PromotionRequest) -> None:
    """Accept `token` once: issued by us, for this user and request, recently; then never again."""
    again = "Enter your password again to sign."
    try:
        value = django_signing.TimestampSigner(salt=_SALT).unsign_object(token or "", max_age=_max_age())
    except django_signing.SignatureExpired:
        raise SignatureRefused(f"This decision form is too old. {again}", field="password") from None
    except django_signing.BadSignature:
        raise SignatureRefused(
            f"This decision form was not issued to you. {again}", field="password"
        ) from None
    if not isinstance(value, dict) or value.get("u") != user.pk or value.get("r") != promotion.pk:
        raise SignatureRefused(f"This decision form was not issued to you. {again}", field="password")
    now = timezone.now()
    try:
        # Its own transaction: a refused signature (a wrong password) uses the form up too.
        with transaction.atomic(durable=not transaction.get_connection().in_atomic_block):
            SignatureNonce.objects.filter(used_at__lt=now - _max_age()).delete()
            SignatureNonce.objects.create(nonce=str(value.get("n", ""))[:64], used_at=now)
    except IntegrityError:
        raise SignatureRefused(
            f"This decision form was already sent once; a signed decision is never repeated. {again}",
            field="password",
        ) from None


def _refused(user, promotion: PromotionRequest, reason: str) -> None:
    """Put a refused signature on the record (in its own transaction: it outlives the refusal)."""
    with transaction.atomic(durable=not transaction.get_connection().in_atomic_block):
        audit.record(
            action=audit.AuditAction.SIGNATURE_REFUSED,
            actor=user,
            meaning=f"Signature refused on request #{promotion.pk} ({reason})",
            details={"reason": reason},
            model_name=promotion.version.model.name,
            version=promotion.version.version,
            to_stage=promotion.stage.name,
            request_id=promotion.pk,
        )


def signature_refusal_record(*, user, promotion: PromotionRequest, reason: str) -> None:
    _refused(user, promotion, reason)


def _reauthentication_check(reauthentication: dict, *, user, promotion: PromotionRequest) -> None:
    """An SSO user's fresh sign-in at the provider (promotions/identity/reauth.py) stands in for
    the password: for this user and request, and no older than a decision form may be."""
    auth_time = reauthentication.get("auth_time")
    if not reauthentication or not isinstance(auth_time, int):
        _refused(user, promotion, "no fresh sign-in at the provider")
        raise SignatureRefused(
            "Sign in again at your provider to sign: nothing was signed.", field="password"
        )
    if timezone.now().timestamp() - auth_time > settings.SIGNATURE_FORM_MAX_AGE_SECONDS:
        _refused(user, promotion, "the sign-in at the provider is too old")
        raise SignatureRefused(
            "Your sign-in at the provider is too old to sign with: nothing was signed.", field="password"
        )


def signature_check(
    *,
    http_request,
    user,
    promotion: PromotionRequest,
    decision: str,
    token: str,
    password: str,
    meaning: str,
    reauthentication: dict | None = None,
) -> SignatureProof:
    """The proof that `user` signs `decision` on `promotion` now, or SignatureRefused saying why
    (with the form field it belongs beside). `reauthentication`: an SSO user's proof of a fresh
    sign-in at the provider, which stands in for the password."""
    _token_consume(token, user=user, promotion=promotion)
    allowed = meanings_for(promotion.stage, decision)
    if not meaning:
        raise SignatureRefused("Choose what your signature means.", field="meaning")
    if meaning not in allowed:
        _refused(user, promotion, "a meaning the stage does not offer")
        raise SignatureRefused(
            f"'{meaning[:80]}' is not a meaning this stage offers: choose one of {', '.join(allowed)}.",
            field="meaning",
        )
    if reauthentication is not None:
        _reauthentication_check(reauthentication, user=user, promotion=promotion)
        return SignatureProof(user_id=user.pk, request_id=promotion.pk, meaning=meaning)
    if not user.has_usable_password():
        # An account without a password and without company sign-in configured has nothing to
        # sign with. Not a failed sign-in: nothing is counted.
        _refused(user, promotion, "no password to sign with")
        raise SignatureRefused(
            "Your account has no password here (single sign-on), so it cannot sign yet; "
            "ask a stage admin for a reviewer who can.",
            field="password",
        )
    if not password:
        raise SignatureRefused("Enter your password to sign.", field="password")
    # authenticate() is the sign-in page's own check: django-axes counts a failure here as a
    # failed sign-in (and refuses a locked-out account), and the sign-in audit sees it too.
    signer = authenticate(http_request, username=user.get_username(), password=password)
    if signer is None or signer.pk != user.pk:
        locked = getattr(http_request, "axes_locked_out", False)
        _refused(user, promotion, "account locked out" if locked else "wrong password")
        if locked:
            raise SignatureRefused(
                "Too many failed attempts: your account is locked for a while. Nothing was signed.",
                field="password",
            )
        raise SignatureRefused("Wrong password: nothing was signed.", field="password")
    return SignatureProof(user_id=user.pk, request_id=promotion.pk, meaning=meaning)


def signature_record(*, proof: SignatureProof, signer, request: PromotionRequest, now) -> dict:
    """The signature's fields for the Review row, sealed with AUDIT_SIGNING_KEY where set."""
    name = signer.get_full_name().strip() or signer.get_username()
    fields = {
        "signed_at": now,
        "signer_username": signer.get_username(),
        "signer_name": name,
        "signed_meaning": proof.meaning,
        "signed_digest": request.evidence_sha256,
        "signature_key_id": "",
        "signature_seal": "",
    }
    key = signing.current_key()
    if key is not None:
        fields["signature_key_id"] = key.key_id
        fields["signature_seal"] = signing.mac_of(key, signature_message(request.pk, fields))
    return fields


def signature_message(request_id: int, fields: dict) -> dict:
    """The sealed message of a signature given as a Review's fields (a row or a dict of them)."""
    return signing.review_signature_message(
        request_id=request_id,
        username=fields["signer_username"],
        name=fields["signer_name"],
        signed_at=audit.utc_iso(fields["signed_at"]),
        meaning=fields["signed_meaning"],
        digest=fields["signed_digest"],
        key_id=fields["signature_key_id"],
    )


def signature_details(fields: dict) -> dict:
    """The signature as the review's audit entry (and so every export) carries it."""
    return {
        "name": fields["signer_name"],
        "username": fields["signer_username"],
        "signed_at": audit.utc_iso(fields["signed_at"]),
        "meaning": fields["signed_meaning"],
        "digest": fields["signed_digest"],
        "key_id": fields["signature_key_id"],
        "seal": fields["signature_seal"],
    }
