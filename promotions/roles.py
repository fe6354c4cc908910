"""The four roles of the product, as Django groups created by a data migration."""

from __future__ import annotations

REQUESTERS = "Requesters"
REVIEWERS = "Reviewers"
STAGE_ADMINS = "Stage admins"
AUDITORS = "Auditors"

ALL_ROLES = (REQUESTERS, REVIEWERS, STAGE_ADMINS, AUDITORS)


def role_names(user) -> set[str]:
    """The role groups of `user`, cached on the instance for the rest of the request."""
    if not getattr(user, "is_authenticated", False):
        return set()
    cached = getattr(user, "_role_names", None)
    if cached is None:
        cached = set(user.groups.filter(name__in=ALL_ROLES).values_list("name", flat=True))
        user._role_names = cached
    return cached


def has_role(user, role: str) -> bool:
    return bool(getattr(user, "is_superuser", False)) or role in role_names(user)
