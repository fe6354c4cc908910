"""Sign-ins through the company's OpenID Connect provider: the user, their SSO identity and
their roles, on the record (promotions/identity calls these with verified claims only).

The provider is the source of truth for an SSO user's roles: at every sign-in and refresh the
role groups are set to what OIDC_ROLE_MAP gives for the provider's groups, and a role no group
gives any more is taken away at once (recorded as any role change is, with `via: oidc`).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from promotions import audit, roles
from promotions.models import SsoIdentity
from promotions.services import people

# Why a sign-in was refused, in words for the page and the log.
REFUSAL_REASONS = {
    "audience": "the ID token was issued for another application (wrong audience)",
    "issuer": "the ID token came from another issuer",
    "nonce": "the ID token does not answer this sign-in (wrong nonce)",
    "expired": "the ID token has expired",
    "signature": "the ID token's signature does not verify",
    "invalid_token": "the ID token is malformed",
    "state": "the answer does not belong to a sign-in started here (wrong or reused state)",
    "no_username": "the provider sent neither preferred_username nor email",
    "userinfo_subject": "the provider's user info names another person than the ID token",
    "username_taken": "a local account already has this user name",
    "inactive": "the account is deactivated here",
    "provider_error": "the provider refused the sign-in",
    "token_request": "the provider refused to exchange the sign-in code",
    "provider_unavailable": "the provider is not answering",
}


class SignInRefused(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail

    @property
    def text(self) -> str:
        return REFUSAL_REASONS.get(self.reason, self.reason)


def groups_from_claims(claims: dict) -> list[str]:
    value = claims.get(settings.OIDC_GROUPS_CLAIM, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return sorted({str(item)[:200] for item in value if isinstance(item, str | int)})


def roles_for_groups(groups: list[str]) -> set[str]:
    return {settings.OIDC_ROLE_MAP[group] for group in groups if group in settings.OIDC_ROLE_MAP}


def _roles_apply(*, user, groups: list[str]) -> set[str]:
    wanted = roles_for_groups(groups)
    held = set(user.groups.filter(name__in=roles.ALL_ROLES).values_list("name", flat=True))
    with people.changes_via("oidc"):
        if lost := held - wanted:
            user.groups.remove(*Group.objects.filter(name__in=lost))
        if gained := wanted - held:
            user.groups.add(*Group.objects.filter(name__in=gained))
    user.__dict__.pop("_role_names", None)
    return wanted


def _username_from_claims(claims: dict) -> str:
    username = str(claims.get("preferred_username") or claims.get("email") or "").strip()
    if not username:
        raise SignInRefused("no_username")
    return username[:150]


def sso_user_sign_in(*, issuer: str, claims: dict, ip_address: str = ""):
    """The user the verified `claims` name, created on first sign-in; roles set from the groups."""
    subject = str(claims["sub"])[:255]
    username = _username_from_claims(claims)
    name = str(claims.get("name") or "")[:150]
    email = str(claims.get("email") or "")[:254]
    groups = groups_from_claims(claims)
    User = get_user_model()
    with transaction.atomic():
        identity = (
            SsoIdentity.objects.select_for_update()
            .select_related("user")
            .filter(issuer=issuer, subject=subject)
            .first()
        )
        if identity is None:
            # Never take over a local account by its name: the provider's users may choose theirs.
            if User.objects.filter(username__iexact=username).exists():
                raise SignInRefused("username_taken", username)
            user = User(username=username, email=email, first_name=name)
            user.set_unusable_password()
            user.save()
            identity = SsoIdentity.objects.create(user=user, issuer=issuer, subject=subject)
        else:
            user = identity.user
            if not user.is_active:
                if not identity.deactivated_by_provider:
                    raise SignInRefused("inactive", user.get_username())
                with people.changes_via("oidc"):
                    user.is_active = True
                    user.save(update_fields=["is_active"])
                identity.deactivated_by_provider = False
            if (user.email, user.first_name, user.last_name) != (email, name, ""):
                user.email, user.first_name, user.last_name = email, name, ""
                user.save(update_fields=["email", "first_name", "last_name"])
        granted = _roles_apply(user=user, groups=groups)
        identity.last_sign_in_at = timezone.now()
        identity.last_groups = groups
        identity.save(update_fields=["last_sign_in_at", "last_groups", "deactivated_by_provider"])
        audit.record(
            action="auth.signed_in",
            actor=user,
            meaning=f"{audit.printed_name(user)} ({user.get_username()}) signed in with "
            f"{settings.OIDC_PROVIDER_NAME}",
            details={
                "via": "oidc",
                "issuer": issuer,
                "subject": subject,
                "groups": groups[:50],
                "roles": sorted(granted),
                "ip_address": ip_address,
            },
        )
    return user


def sso_user_refresh(*, user, claims: dict) -> set[str]:
    """A refresh the provider answered: the roles follow its groups now."""
    groups = groups_from_claims(claims)
    with transaction.atomic():
        granted = _roles_apply(user=user, groups=groups)
        SsoIdentity.objects.filter(user=user).update(last_groups=groups)
    return granted


def sso_user_provider_gone(*, user, reason: str) -> None:
    """The provider no longer vouches for `user` (its refresh refused): deactivate the account.
    A sign-in the provider accepts again activates it."""
    with transaction.atomic():
        with people.changes_via("oidc"):
            user.is_active = False
            user.save(update_fields=["is_active"])
        SsoIdentity.objects.filter(user=user).update(deactivated_by_provider=True)
        audit.record(
            action="auth.oidc_refused",
            actor=user,
            meaning=f"{settings.OIDC_PROVIDER_NAME} no longer vouches for {user.get_username()}: "
            "account deactivated",
            details={"via": "oidc", "reason": reason, "username": user.get_username()},
        )


def sso_sign_in_refused_record(*, reason: str, detail: str = "", ip_address: str = "") -> None:
    """A refused sign-in, in its own transaction: it survives whatever rolled back."""
    text = REFUSAL_REASONS.get(reason, reason)
    with transaction.atomic(durable=not transaction.get_connection().in_atomic_block):
        audit.record(
            action="auth.oidc_refused",
            meaning=f"Refused a sign-in with {settings.OIDC_PROVIDER_NAME}: {text}",
            details={"via": "oidc", "reason": reason, "detail": detail[:300], "ip_address": ip_address},
        )
