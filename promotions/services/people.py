"""Who holds a role, on the record: group membership and activation of user accounts.

Changes come from anywhere (the admin, a shell, a script): the receivers in auth_events call
these on Django's model signals. A reviewer who leaves (deactivated, or out of a group) stops
counting at once: their live approvals go stale, and an approved request they were needed for
waits for approvals again. The apply re-checks too, for whatever slips between.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

from django.contrib.auth.models import Group
from django.db import transaction

from promotions import audit, policy
from promotions.models import Profile, PromotionRequest, Review
from promotions.services.lifecycle import request_reopen

Status = PromotionRequest.Status

# What made the changes being recorded, when not a person in the admin or a shell: "oidc" while
# the company sign-in applies the provider's groups (promotions/services/identity.py).
_changed_via: ContextVar[str] = ContextVar("people_changed_via", default="")


@contextmanager
def changes_via(source: str):
    """Group and activation changes made inside are recorded with `via: source`."""
    token = _changed_via.set(source)
    try:
        yield
    finally:
        _changed_via.reset(token)


def _via() -> dict[str, str]:
    return {"via": via} if (via := _changed_via.get()) else {}


def user_group_changed(*, user, group: Group, added: bool, actor) -> None:
    verb = "added to" if added else "removed from"
    with transaction.atomic():
        audit.record(
            action="user.group_added" if added else "user.group_removed",
            actor=actor,
            meaning=f"{audit.printed_name(user)} ({user.get_username()}) {verb} {group.name}",
            details={"username": user.get_username(), "group": group.name, **_via()},
        )
        if not added:
            approvals_recheck(user=user)


def user_activation_changed(*, user, active: bool, actor) -> None:
    with transaction.atomic():
        audit.record(
            action="user.activated" if active else "user.deactivated",
            actor=actor,
            meaning=f"{audit.printed_name(user)} ({user.get_username()}) "
            + ("activated" if active else "deactivated"),
            details={"username": user.get_username(), **_via()},
        )
        if not active:
            approvals_recheck(user=user)


def profile_save(*, form, actor):
    """Save a validated profile form (the person's MLflow user) and record the change: it
    decides on which versions they count as the author."""
    with transaction.atomic():
        existing = form.instance.pk is not None
        before = (
            Profile.objects.filter(pk=form.instance.pk).values_list("mlflow_user", flat=True).first()
            if existing
            else ""
        )
        profile = form.save()
        if existing and before == profile.mlflow_user:
            return profile
        user = profile.user
        audit.record(
            action="user.profile_changed",
            actor=actor,
            meaning=f"{audit.printed_name(user)} ({user.get_username()}): MLflow user "
            f"'{before or ''}' → '{profile.mlflow_user}'",
            details={
                "username": user.get_username(),
                "mlflow_user": {"before": before, "after": profile.mlflow_user},
            },
        )
    return profile


def approvals_recheck(*, user) -> int:
    """Mark stale the live approvals of `user` that no longer count; reopen what needed them."""
    reviews = Review.objects.filter(
        reviewer=user,
        decision=Review.Decision.APPROVE,
        stale=False,
        request__status__in=(Status.PENDING, Status.APPROVED, Status.SCHEDULED),
    ).select_related("request__stage", "request__version__model", "reviewer")
    stale = 0
    for review in reviews:
        request = review.request
        if policy.approval_counts(review, request):
            continue
        reason = f"{review.reviewer_name} may no longer approve requests to {request.stage.name}"
        Review.objects.filter(pk=review.pk).update(stale=True, stale_reason=reason[:500])
        stale += 1
        if request.status in (Status.APPROVED, Status.SCHEDULED) and policy.approval_shortfall(request):
            request_reopen(request, old=(Status.APPROVED, Status.SCHEDULED), reason=reason)
    return stale
