"""Keyed evidence: HMAC-SHA256 under AUDIT_SIGNING_KEY, over texts the log and its exports hold.

The chain's SHA-256 proves a row unedited only to someone who trusts the rest of the chain: whoever
can write the table can rewrite a row and recompute every hash after it (and the chain head, and an
export's manifest). A MAC cannot be recomputed without the key, which the database never holds.
Four things carry one: the chain head row (`head_mac`), the seals (`seal_mac`, see log.seal),
every export manifest (`sign_manifest`) and every reviewer's signature
(`review_signature_message`). Each message is canonical JSON naming what it is ("kind"), so a MAC
of one kind is never taken for another.

Key ids make rotation possible: the key in use is AUDIT_SIGNING_KEY (id AUDIT_SIGNING_KEY_ID);
AUDIT_SIGNING_KEYS_OLD keeps retired keys for verifying what they signed.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from promotions.audit.format import canonical_json

ALGORITHM = "HMAC-SHA256"


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    secret: bytes


def current_key() -> SigningKey | None:
    """The key new MACs are made with; None when the log is unsigned."""
    if not settings.AUDIT_SIGNING_KEY:
        return None
    return SigningKey(settings.AUDIT_SIGNING_KEY_ID, settings.AUDIT_SIGNING_KEY.encode())


def verification_keys() -> dict[str, bytes]:
    """Every key a MAC may be checked with, by id: the current one and the retired ones."""
    keys = {key_id: secret.encode() for key_id, secret in settings.AUDIT_SIGNING_KEYS_OLD.items()}
    current = current_key()
    if current is not None:
        keys[current.key_id] = current.secret
    return keys


def is_signing() -> bool:
    return bool(verification_keys())


def _mac(secret: bytes, message: dict[str, Any]) -> str:
    return hmac.new(secret, canonical_json(message).encode(), hashlib.sha256).hexdigest()


def head_message(*, sequence: int, hash_: str, key_id: str) -> dict[str, Any]:
    return {"kind": "audit-chain-head", "sequence": sequence, "hash": hash_, "key_id": key_id}


def seal_message(*, sequence: int, hash_: str, created_at: str, key_id: str) -> dict[str, Any]:
    return {
        "kind": "audit-seal",
        "sequence": sequence,
        "hash": hash_,
        "created_at": created_at,
        "key_id": key_id,
    }


def review_signature_message(
    *, request_id: int, username: str, name: str, signed_at: str, meaning: str, digest: str, key_id: str
) -> dict[str, Any]:
    """What a reviewer's electronic signature seals: who, when, what it means and what was signed."""
    return {
        "kind": "review-signature",
        "request_id": request_id,
        "username": username,
        "name": name,
        "signed_at": signed_at,
        "meaning": meaning,
        "digest": digest,
        "key_id": key_id,
    }


def mac_of(key: SigningKey, message: dict[str, Any]) -> str:
    return _mac(key.secret, message)


def mac_problem(message: dict[str, Any], mac: str) -> str:
    """'' when `mac` is the MAC of `message` under the key its key_id names; else why not."""
    secret = verification_keys().get(message["key_id"])
    if secret is None:
        return (
            f"it is signed with key id '{message['key_id']}', which is not configured "
            "(keep retired keys in AUDIT_SIGNING_KEYS_OLD)"
        )
    if not hmac.compare_digest(_mac(secret, message), mac):
        return "its MAC does not match: it was written without the signing key"
    return ""


# --- export manifests -----------------------------------------------------------------------


def _manifest_body(manifest: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in manifest.items() if name != "signature"}


def sign_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with a `signature`: {algorithm, key_id, mac}, the MAC over the canonical JSON of
    the manifest without its signature. Unchanged without a key."""
    key = current_key()
    if key is None:
        return manifest
    mac = _mac(key.secret, _manifest_body(manifest))
    return {**manifest, "signature": {"algorithm": ALGORITHM, "key_id": key.key_id, "mac": mac}}


def manifest_signature_problem(manifest: dict[str, Any]) -> str:
    """'' when the manifest's signature checks (or no key is configured to check it with)."""
    keys = verification_keys()
    if not keys:
        return ""
    signature = manifest.get("signature")
    if signature is None:
        return (
            "the manifest is not signed, but a signing key is configured: its signature was "
            "removed, or it was written before the key was"
        )
    if (
        not isinstance(signature, dict)
        or signature.get("algorithm") != ALGORITHM
        or not isinstance(signature.get("key_id"), str)
        or not isinstance(signature.get("mac"), str)
    ):
        return f"the manifest's signature is not an {ALGORITHM} signature with a key_id and a mac"
    secret = keys.get(signature["key_id"])
    if secret is None:
        return (
            f"the manifest is signed with key id '{signature['key_id']}', which is not configured "
            "(keep retired keys in AUDIT_SIGNING_KEYS_OLD)"
        )
    if not hmac.compare_digest(_mac(secret, _manifest_body(manifest)), signature["mac"]):
        return "the manifest's signature does not match: the manifest (or the file with it) was rewritten"
    return ""


def describe() -> str:
    """How verification output names the keying: 'signed (key id …)' or 'unsigned'."""
    key = current_key()
    if key is not None:
        return f"signed (HMAC-SHA256, key id {key.key_id})"
    if settings.AUDIT_SIGNING_KEYS_OLD:
        return "checked with retired keys only (no AUDIT_SIGNING_KEY: nothing new is signed)"
    return (
        "unsigned (no AUDIT_SIGNING_KEY): the hashes prove the rows consistent with each other, "
        "not that whoever could write the database did not recompute them"
    )
