"""The access review auditors sample each quarter: who holds which role, since when, granted by
whom, and every role change in a period.

Read from the users table and the audit log's role-change entries (`user.group_added`,
`user.group_removed`, `user.activated`, `user.deactivated`, written by services/people.py). An
entry names its user by username (details["username"]): a grant recorded under a name the user
no longer has is not found, and the role then reads "before the log".

Every read is a handful of queries whatever the number of users: no query per user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from django.contrib.auth import get_user_model
from django.db.models import Count, Max, Q
from django.utils import timezone
from django.utils.dateparse import parse_date

from promotions import roles
from promotions.audit.actions import AuditAction
from promotions.models import AuditEvent, SsoIdentity

GROUP_ACTIONS = (AuditAction.USER_GROUP_ADDED.value, AuditAction.USER_GROUP_REMOVED.value)
ACTIVATION_ACTIONS = (AuditAction.USER_ACTIVATED.value, AuditAction.USER_DEACTIVATED.value)
ROLE_CHANGE_ACTIONS = GROUP_ACTIONS + ACTIVATION_ACTIONS
DEFAULT_PERIOD_DAYS = 90
_MAX_DATE_LENGTH = 32

SignInKind = Literal["local", "SSO"]


def sign_in_kind(user) -> SignInKind:
    """How `user` signs in. The one place that decides it: an account the company sign-in made
    (it has an SsoIdentity) comes in through the provider; any other with its local password."""
    try:
        return "SSO" if user.sso_identity else "local"
    except SsoIdentity.DoesNotExist:
        return "local"


@dataclass(frozen=True)
class Grant:
    """One group `user` is in now, and the audit entry that put them there (None: not found)."""

    group: str
    since: datetime | None = None
    granted_by: str = ""  # the actor's printed name ("system" for a shell or a script)
    granted_by_username: str = ""
    sequence: int | None = None
    # Why `since` is empty: "before the log" (no grant recorded), or "not on the record" (the
    # latest entry for the pair is a removal, so the membership came back by an unaudited path).
    unknown: str = ""


@dataclass(frozen=True)
class AccessRow:
    user_id: int
    username: str
    name: str
    active: bool
    superuser: bool
    staff: bool
    roles: list[Grant]  # among the four roles, in roles.ALL_ROLES order
    groups: list[Grant]  # any other group (a stage's approver groups may be any group)
    last_sign_in: datetime | None
    last_action_at: datetime | None
    last_action: str
    tokens: int  # active (unrevoked) API tokens
    sign_in: SignInKind

    @property
    def role_names(self) -> list[str]:
        flags = [label for label, on in (("superuser", self.superuser), ("staff", self.staff)) if on]
        return [grant.group for grant in self.roles] + flags


@dataclass(frozen=True)
class RoleChange:
    sequence: int
    at: datetime
    actor: str  # who made the change (printed name)
    actor_username: str
    username: str  # whose access changed
    change: str  # "granted", "removed", "activated", "deactivated"
    role: str  # the group; "" for an activation change
    via: str
    meaning: str


def _grants_on_record() -> dict[tuple[str, str], AuditEvent]:
    """(username, group) → the newest group entry (added or removed) for that pair."""
    latest: dict[tuple[str, str], AuditEvent] = {}
    events = AuditEvent.objects.filter(action__in=GROUP_ACTIONS).only(
        "sequence", "created_at", "actor_name", "actor_username", "action", "details"
    )
    # Ascending, so a later entry replaces an earlier one; one pass, no query per user.
    for event in events.order_by("sequence").iterator(chunk_size=2000):
        details = event.details if isinstance(event.details, dict) else {}
        key = (str(details.get("username", "")), str(details.get("group", "")))
        latest[key] = event
    return latest


def _grant(user, group: str, on_record: dict[tuple[str, str], AuditEvent]) -> Grant:
    event = on_record.get((user.get_username(), group))
    # An entry older than the account belongs to an earlier account of the same name (a user
    # deleted and created again): deleting one removes its memberships without a signal.
    if event is None or event.created_at < user.date_joined:
        return Grant(group=group, unknown="before the log")
    if event.action != AuditAction.USER_GROUP_ADDED:
        return Grant(group=group, unknown="not on the record")
    return Grant(
        group=group,
        since=event.created_at,
        granted_by=event.actor_name or "system",
        granted_by_username=event.actor_username,
        sequence=event.sequence,
    )


def _last_actions() -> dict[int, AuditEvent]:
    """actor id → the newest entry that actor recorded (one query: the newest per actor inside)."""
    newest = (
        AuditEvent.objects.filter(actor_id__isnull=False)
        .order_by()
        .values("actor_id")
        .annotate(last=Max("sequence"))
        .values("last")
    )
    events = AuditEvent.objects.filter(sequence__in=newest).only(
        "sequence", "actor_id", "created_at", "action", "meaning"
    )
    return {event.actor_id: event for event in events}


def access_rows() -> list[AccessRow]:
    """Every user, by username, with roles, where each came from, and recent activity."""
    users = list(
        get_user_model()
        .objects.annotate(tokens=Count("api_tokens", filter=Q(api_tokens__revoked_at__isnull=True)))
        .select_related("sso_identity")
        .prefetch_related("groups")
        .order_by("username")
    )
    if not users:
        return []
    on_record = _grants_on_record()
    last = _last_actions()
    order = {name: place for place, name in enumerate(roles.ALL_ROLES)}
    rows = []
    for user in users:
        username = user.get_username()
        names = sorted((g.name for g in user.groups.all()), key=lambda n: (order.get(n, len(order)), n))
        action = last.get(user.pk)
        rows.append(
            AccessRow(
                user_id=user.pk,
                username=username,
                name=user.get_full_name().strip(),
                active=user.is_active,
                superuser=user.is_superuser,
                staff=user.is_staff,
                roles=[_grant(user, n, on_record) for n in names if n in order],
                groups=[_grant(user, n, on_record) for n in names if n not in order],
                last_sign_in=user.last_login,
                last_action_at=action.created_at if action else None,
                last_action=f"{action.action}: {action.meaning}" if action else "",
                tokens=user.tokens,
                sign_in=sign_in_kind(user),
            )
        )
    return rows


# --- role changes in a period -------------------------------------------------------------------


class PeriodError(ValueError):
    """A period the changes cannot be listed for; the message says why, for people."""


@dataclass(frozen=True)
class Period:
    start: date  # first day, inclusive (UTC)
    end: date  # last day, inclusive (UTC)
    given: dict[str, str] = field(default_factory=dict)  # the text as typed, for the form

    @property
    def since(self) -> datetime:
        return datetime.combine(self.start, time.min, tzinfo=UTC)

    @property
    def until(self) -> datetime:
        """The first moment after the period (exclusive)."""
        return datetime.combine(self.end, time.min, tzinfo=UTC) + timedelta(days=1)


def _day(text: str, *, name: str) -> date:
    if len(text) > _MAX_DATE_LENGTH or "\x00" in text:
        raise PeriodError(f"'{name}' must be a date such as 2026-11-25.")
    try:
        day = parse_date(text)
    except ValueError:
        raise PeriodError(f"'{name}' is not a real date: '{text}'.") from None
    if day is None:
        raise PeriodError(f"'{name}' must be a date such as 2026-11-25, not '{text}'.")
    if day >= date.max:  # the day after it is the period's end
        raise PeriodError(f"'{name}' is too far in the future.")
    return day


def parse_period(values, *, today: date | None = None) -> Period:
    """The period in `values` (`from`, `until`: dates, both inclusive, UTC days); each missing
    one defaults to the last DEFAULT_PERIOD_DAYS days. PeriodError says what is wrong."""
    today = today or timezone.now().astimezone(UTC).date()
    given = {name: str(values.get(name) or "").strip() for name in ("from", "until")}
    end = _day(given["until"], name="until") if given["until"] else today
    start = _day(given["from"], name="from") if given["from"] else end - timedelta(days=DEFAULT_PERIOD_DAYS)
    if start > end:
        raise PeriodError(f"The period starts ({start.isoformat()}) after it ends ({end.isoformat()}).")
    return Period(start=start, end=end, given=given)


def _via(details: dict, actor_username: str) -> str:
    if details.get("via") == "cli":
        return "command line"
    if isinstance(details.get("api_token"), dict):
        return f"API token {details['api_token'].get('name', '')}".strip()
    if details.get("via"):
        return str(details["via"])
    return "web" if actor_username else "system"


_CHANGE_WORDS = {
    AuditAction.USER_GROUP_ADDED.value: "granted",
    AuditAction.USER_GROUP_REMOVED.value: "removed",
    AuditAction.USER_ACTIVATED.value: "activated",
    AuditAction.USER_DEACTIVATED.value: "deactivated",
}


def role_changes(since: datetime, until: datetime, *, limit: int | None = None) -> list[RoleChange]:
    """Grants, removals and activation changes recorded in [since, until), newest first."""
    return list(iter_role_changes(since, until, limit=limit))


def iter_role_changes(since: datetime, until: datetime, *, limit: int | None = None):
    events = (
        AuditEvent.objects.filter(action__in=ROLE_CHANGE_ACTIONS, created_at__gte=since, created_at__lt=until)
        .only("sequence", "created_at", "actor_name", "actor_username", "action", "meaning", "details")
        .order_by("-sequence")
    )
    if limit is not None:
        events = events[:limit]
    for event in events.iterator(chunk_size=2000):
        details = event.details if isinstance(event.details, dict) else {}
        yield RoleChange(
            sequence=event.sequence,
            at=event.created_at,
            actor=event.actor_name or "system",
            actor_username=event.actor_username,
            username=str(details.get("username", "")),
            change=_CHANGE_WORDS[event.action],
            role=str(details.get("group", "")),
            via=_via(details, event.actor_username),
            meaning=event.meaning,
        )
