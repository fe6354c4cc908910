"""Decisions on a request: approve, reject, cancel, retry, expire.

Who may decide is `policy.decide_refusal`'s answer, the same one the pages and the queue use.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from promotions import audit, policy
from promotions.errors import (
    AlreadyDecided,
    DuplicateRequest,
    EvidenceChanged,
    InvalidRequest,
    NotAllowed,
    NotIndependent,
    SignatureRequired,
)
from promotions.models import MAX_TEXT, PromotionRequest, Review
from promotions.services.lifecycle import (
    audit_context,
    enqueue_apply,
    meaning,
    refusal,
    request_approve_for_apply,
    request_decide,
    request_lock,
    status_set,
)
from promotions.services.signatures import SignatureProof, signature_details, signature_record
from promotions.text import clean_text

Status = PromotionRequest.Status


def _review_permission(request: PromotionRequest, reviewer, action: str) -> None:
    refused = policy.decide_refusal(reviewer, request)
    if refused is not None:
        error = NotIndependent if refused.code == policy.NOT_INDEPENDENT else NotAllowed
        raise refusal(reviewer, request, action, refused.reason, refused.message, error=error)


def _signature_required(
    request: PromotionRequest, reviewer, action: str, signature: SignatureProof | None
) -> None:
    """A stage (or the model's risk tier) that requires signatures takes no decision without the
    signer's fresh proof."""
    rules = policy.rules_in_force(request)
    if not rules.signature_required:
        return
    if signature is not None and signature.user_id == reviewer.pk and signature.request_id == request.pk:
        return
    audit.record_denied(
        actor=reviewer,
        what=f"{action} request #{request.pk} unsigned",
        reason="the stage requires a signature"
        if request.stage.signature_required
        else f"risk tier {rules.tier or rules.tier_at_filing} requires a signature",
        model_name=request.version.model.name,
        version=request.version.version,
        to_stage=request.stage.name,
        request_id=request.pk,
    )
    who = request.stage.name if request.stage.signature_required else f"Risk tier {rules.tier_label}"
    raise SignatureRequired(
        f"{who} requires a signed decision: approve or reject on the request page "
        f"(/requests/{request.pk}/), re-entering your password. API tokens cannot sign."
    )


def _review_create(
    locked: PromotionRequest, reviewer, decision: str, comment: str, now, signature: SignatureProof | None
) -> dict | None:
    """One live review per reviewer: checked under the request's row lock, and by the
    database's unique constraint if two sessions of the same reviewer race. Returns the
    signature's audit details when the review is signed."""
    if Review.objects.filter(request=locked, reviewer=reviewer, stale=False).exists():
        raise AlreadyDecided("You have already reviewed this request.")
    signed = signature_record(proof=signature, signer=reviewer, request=locked, now=now) if signature else {}
    try:
        with transaction.atomic():
            Review.objects.create(
                request=locked,
                reviewer=reviewer,
                reviewer_name=audit.printed_name(reviewer),
                decision=decision,
                comment=comment,
                evidence_sha256=locked.evidence_sha256,
                created_at=now,
                **signed,
            )
    except IntegrityError:
        raise AlreadyDecided("You have already reviewed this request.") from None
    return signature_details(signed) if signed else None


def _locked_pending(request_id: int) -> PromotionRequest:
    locked = request_lock(request_id)
    if locked.status != Status.PENDING:
        raise AlreadyDecided(f"Request #{locked.pk} is already {locked.get_status_display().lower()}.")
    return locked


def review_approve(
    *,
    request: PromotionRequest,
    reviewer,
    comment: str = "",
    evidence_sha256: str | None = None,
    via: str = "web",
    signature: SignatureProof | None = None,
) -> PromotionRequest:
    comment = clean_text(comment, what="comment", max_length=MAX_TEXT)
    _review_permission(request, reviewer, "approve")
    _signature_required(request, reviewer, "approve", signature)
    with transaction.atomic():
        locked = _locked_pending(request.pk)
        blocker = policy.approval_blocker(locked)
        if blocker is not None:
            raise blocker
        if evidence_sha256 and evidence_sha256 != locked.evidence_sha256:
            raise EvidenceChanged("The evidence changed since you loaded the page; review it again.")
        if signature is not None and not evidence_sha256:
            # A signature is of the evidence the signer saw: without its digest, nothing to sign.
            raise EvidenceChanged("The page did not say which evidence you saw; review it again.")
        now = timezone.now()
        signed = _review_create(locked, reviewer, Review.Decision.APPROVE, comment, now, signature)
        failing = policy.failing(locked.check_results)
        if failing:
            # Raised inside the transaction: the review just written is rolled back with it.
            raise InvalidRequest(
                "Checks must pass before this request can be approved. Failing: " + "; ".join(failing)
            )
        counting = policy.counting_approvals(locked)
        approvals, required = len(counting), policy.required_approvals(locked)
        shortfall = policy.approval_shortfall(locked, counting)
        audit.record(
            action="review.approved",
            actor=reviewer,
            meaning=meaning("Approved", locked),
            details={
                "comment": comment,
                "evidence_sha256": locked.evidence_sha256,
                "approvals": approvals,
                "required": required,
                "via": via,
                **({"signature": signed} if signed else {}),
            },
            **audit_context(locked),
        )
        if not shortfall:
            request_approve_for_apply(locked, actor=reviewer, reason=f"{approvals} of {required} approvals")
        else:
            PromotionRequest.objects.filter(pk=locked.pk).update(updated_at=now)
    locked.refresh_from_db()
    return locked


def review_reject(
    *,
    request: PromotionRequest,
    reviewer,
    comment: str,
    via: str = "web",
    evidence_sha256: str | None = None,
    signature: SignatureProof | None = None,
) -> PromotionRequest:
    comment = clean_text(
        comment,
        what="comment",
        max_length=MAX_TEXT,
        required="A rejection needs a comment: say what must change.",
    )
    _review_permission(request, reviewer, "reject")
    _signature_required(request, reviewer, "reject", signature)
    with transaction.atomic():
        locked = _locked_pending(request.pk)
        if signature is not None and evidence_sha256 != locked.evidence_sha256:
            raise EvidenceChanged("The evidence changed since you loaded the page; review it again.")
        now = timezone.now()
        signed = _review_create(locked, reviewer, Review.Decision.REJECT, comment, now, signature)
        details = {"comment": comment, "evidence_sha256": locked.evidence_sha256, "via": via}
        if signed:
            details["signature"] = signed
        if not request_decide(
            locked, Status.PENDING, Status.REJECTED, actor=reviewer, details=details, now=now
        ):
            raise AlreadyDecided(f"Request #{locked.pk} was decided by someone else first.")
    locked.refresh_from_db()
    return locked


def request_cancel(*, request: PromotionRequest, user, via: str = "web") -> PromotionRequest:
    if not policy.may_cancel(user, request):
        raise refusal(
            user,
            request,
            "cancel",
            "not the requester or a stage admin",
            "Only the requester or a stage admin may cancel a request.",
        )
    with transaction.atomic():
        open_statuses = (Status.PENDING, Status.APPROVED, Status.SCHEDULED)
        if not request_decide(request, open_statuses, Status.CANCELLED, actor=user, details={"via": via}):
            current = PromotionRequest.objects.get(pk=request.pk)
            raise AlreadyDecided(f"Request #{request.pk} is already {current.get_status_display().lower()}.")
    request.refresh_from_db()
    return request


def request_retry(*, request: PromotionRequest, user) -> PromotionRequest:
    if not policy.is_stage_admin(user):
        raise refusal(
            user, request, "retry", "not a stage admin", "Only stage admins may retry a failed request."
        )
    with transaction.atomic():
        now = timezone.now()
        try:
            with transaction.atomic():
                changed = status_set(
                    request.pk, Status.FAILED, Status.APPROVED, now=now, attempts=0, enqueued_at=None
                )
        except IntegrityError:
            raise DuplicateRequest(
                "Another open request for this version and stage exists; retry is not possible."
            ) from None
        if not changed:
            current = PromotionRequest.objects.get(pk=request.pk)
            raise AlreadyDecided(
                f"Request #{request.pk} is {current.get_status_display().lower()}, not failed."
            )
        audit.record(
            action="request.retried",
            actor=user,
            meaning=meaning("Retry", request),
            details={"previous_error": request.last_error},
            **audit_context(request),
        )
        transaction.on_commit(lambda: enqueue_apply(request.pk))
    request.refresh_from_db()
    return request


def requests_expire(*, now=None) -> int:
    now = now or timezone.now()
    expired = 0
    candidates = PromotionRequest.objects.filter(status=Status.PENDING, expires_at__lte=now).select_related(
        "version__model", "stage"
    )
    for request in candidates:
        with transaction.atomic():
            details = {"expires_at": audit.utc_iso(request.expires_at)}
            expired += request_decide(request, Status.PENDING, Status.EXPIRED, details=details, now=now)
    return expired
