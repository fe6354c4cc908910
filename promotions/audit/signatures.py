"""Checking reviewers' electronic signatures against the log (`manage.py verify_audit_log`).

A signature is written twice in the decision's transaction: on the Review row and in the
review's audit entry (`details.signature`), under the hash chain. It holds the digest of what was
signed: the request's evidence digest at that moment, which the log also records
(`request.created` gives it; `request.evidence_changed` and `request.manifest_recorded`, when the
model files' digest joins the evidence, move it). A signature no longer matches when

- the digest it names is not the request's evidence digest the log held when it was signed;
- its seal (HMAC-SHA256 under AUDIT_SIGNING_KEY, when it has one) does not check;
- its Review row says something else than its audit entry (or no entry records it).

Every such signature is named (entry, request, signer), not only the first: the hash chain already
names the first broken entry, and a reviews table edited behind the log's back breaks no hash.
"""

from __future__ import annotations

from typing import Any

from promotions.audit import signing
from promotions.audit.actions import AuditAction
from promotions.audit.format import utc_iso
from promotions.models import AuditEvent, Review

_DIGEST_ACTIONS = (
    AuditAction.REQUEST_CREATED,
    AuditAction.REQUEST_EVIDENCE_CHANGED,
    AuditAction.REQUEST_MANIFEST_RECORDED,
)
_REVIEW_ACTIONS = (AuditAction.REVIEW_APPROVED, AuditAction.REVIEW_REJECTED)
_COMPARED = ("name", "username", "signed_at", "meaning", "digest", "key_id", "seal")


def _message(request_id: int | None, signature: dict[str, Any]) -> dict[str, Any]:
    return signing.review_signature_message(
        request_id=request_id,
        username=signature.get("username", ""),
        name=signature.get("name", ""),
        signed_at=signature.get("signed_at", ""),
        meaning=signature.get("meaning", ""),
        digest=signature.get("digest", ""),
        key_id=signature.get("key_id", ""),
    )


def _seal_problem(request_id: int | None, signature: dict[str, Any]) -> str:
    if not signature.get("seal"):
        return ""  # signed while the log had no key: the hash chain is all that vouches for it
    problem = signing.mac_problem(_message(request_id, signature), signature.get("seal", ""))
    return f"its seal: {problem.replace('its MAC', 'the MAC')}" if problem else ""


def _who(sequence: int | None, request_id: int | None, signature: dict[str, Any]) -> str:
    where = f"entry #{sequence}" if sequence is not None else "no entry"
    signer = f"{signature.get('name', '')} ({signature.get('username', '')})"
    return f"signature of {where}, request #{request_id}, by {signer}"


def _review_signature(review: Review) -> dict[str, Any]:
    return {
        "name": review.signer_name,
        "username": review.signer_username,
        "signed_at": utc_iso(review.signed_at),
        "meaning": review.signed_meaning,
        "digest": review.signed_digest,
        "key_id": review.signature_key_id,
        "seal": review.signature_seal,
    }


def signature_problems() -> list[str]:
    """One sentence for every signature that no longer matches; empty when all do."""
    problems: list[str] = []
    digests: dict[int, str] = {}
    recorded: dict[tuple[int, str, str], tuple[int, dict[str, Any]]] = {}
    events = (
        AuditEvent.objects.filter(action__in=(*_DIGEST_ACTIONS, *_REVIEW_ACTIONS), request_id__isnull=False)
        .order_by("sequence")
        .values_list("sequence", "action", "request_id", "details")
    )
    for sequence, action, request_id, details in events.iterator(chunk_size=2000):
        details = details if isinstance(details, dict) else {}
        if action == AuditAction.REQUEST_CREATED:
            digests[request_id] = details.get("evidence_sha256", "")
            continue
        if action == AuditAction.REQUEST_EVIDENCE_CHANGED:
            digests[request_id] = details.get("new_sha256", "")
            continue
        if action == AuditAction.REQUEST_MANIFEST_RECORDED:
            # The model files' digest joined the evidence: what a signer sees from then on.
            digests[request_id] = details.get("evidence_sha256", "")
            continue
        signature = details.get("signature")
        if not isinstance(signature, dict):
            continue
        recorded[(request_id, str(signature.get("username")), str(signature.get("signed_at")))] = (
            sequence,
            signature,
        )
        expected = digests.get(request_id)
        if signature.get("digest") != expected:
            problems.append(
                f"{_who(sequence, request_id, signature)}: it signed digest {signature.get('digest')}, "
                f"but the request's evidence digest on the record then was {expected or 'none'}"
            )
        if problem := _seal_problem(request_id, signature):
            problems.append(f"{_who(sequence, request_id, signature)}: {problem}")
    for review in Review.objects.filter(signed_at__isnull=False).order_by("id").iterator(chunk_size=2000):
        row = _review_signature(review)
        entry = recorded.get((review.request_id, row["username"], row["signed_at"]))
        if entry is None:
            problems.append(f"{_who(None, review.request_id, row)}: no audit entry records this signature")
            continue
        sequence, signature = entry
        differs = [name for name in _COMPARED if signature.get(name) != row[name]]
        if differs:
            problems.append(
                f"{_who(sequence, review.request_id, signature)}: the review's record differs from the "
                f"audit entry in {', '.join(differs)}"
            )
    return problems
