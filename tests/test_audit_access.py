"""The access review: every user's roles, since when and granted by whom, and the role changes of
a period, on a page for auditors and as CSV."""

import csv
import io
import re
from datetime import date

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone

from promotions import audit, roles
from promotions.audit import access
from promotions.models import ApiToken, AuditEvent, SsoIdentity
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

URLS = ("/audit/access/", "/audit/access.csv", "/audit/access/changes.csv")


def body_of(response) -> str:
    return (b"".join(response.streaming_content) if response.streaming else response.content).decode()


def csv_rows(response) -> list[list[str]]:
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(body_of(response))))


def row_of(page: str, username: str) -> str:
    match = re.search(rf'<tr data-username="{re.escape(username)}">(.*?)</tr>', page, re.S)
    assert match, f"no row for {username}"
    return match.group(1)


@pytest.fixture
def boss(db):
    return User.objects.create_superuser("boss", password="pw-boss-long", first_name="Bo", last_name="Ss")


def set_groups_in_admin(client, boss, user, *group_names):
    """Save `user` in the admin with exactly these groups, as `boss`: the log names boss."""
    client.force_login(boss)
    url = f"/admin/auth/user/{user.pk}/change/"
    form = client.get(url).context["adminform"].form
    data = {
        name: value
        for name, value in form.initial.items()
        if value is not None and name not in ("password", "groups", "user_permissions", "last_login")
    }
    data["date_joined_0"] = user.date_joined.strftime("%Y-%m-%d")
    data["date_joined_1"] = user.date_joined.strftime("%H:%M:%S")
    data["groups"] = [Group.objects.get(name=name).pk for name in group_names]
    if user.is_active:
        data["is_active"] = "on"
    response = client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    client.logout()


# --- who may -------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", URLS)
def test_anonymous_users_are_sent_to_sign_in(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("persona", ["requester", "reviewer", "stage_admin", "outsider"])
def test_every_other_role_is_refused_in_the_sites_frame_and_on_the_record(client, request, url, persona):
    user = request.getfixturevalue(persona)
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 403
    page = response.content.decode()
    assert 'class="frame"' in page and "Only auditors" in page
    assert "data-username" not in page
    denied = AuditEvent.objects.filter(action="auth.denied").latest("sequence")
    assert denied.actor_username == user.username and "not an auditor" in denied.meaning
    assert audit.verify_database().ok


def test_the_audit_page_links_to_the_access_review(client, auditor):
    client.force_login(auditor)
    assert 'href="/audit/access/"' in client.get("/audit/").content.decode()


# --- the users table -----------------------------------------------------------------------------


def test_a_grant_in_the_admin_shows_who_granted_it_and_when(client, auditor, requester, boss):
    set_groups_in_admin(client, boss, requester, roles.REQUESTERS, roles.REVIEWERS)
    granted = AuditEvent.objects.filter(action="user.group_added", details__group=roles.REVIEWERS).get()

    row = next(r for r in access.access_rows() if r.username == "riley")
    assert [g.group for g in row.roles] == [roles.REQUESTERS, roles.REVIEWERS]
    reviewers = row.roles[1]
    assert (reviewers.since, reviewers.granted_by, reviewers.granted_by_username, reviewers.sequence) == (
        granted.created_at,
        "Bo Ss",
        "boss",
        granted.sequence,
    )
    # The persona's first role came from a script (conftest adds it with nobody signed in).
    assert row.roles[0].granted_by == "system"

    client.force_login(auditor)
    response = client.get("/audit/access/")
    assert response.status_code == 200
    cells = row_of(response.content.decode(), "riley")
    assert f'datetime="{granted.created_at.isoformat()}"' in cells
    assert f'title="{granted.created_at:%Y-%m-%d %H:%M:%S} UTC"' in cells
    assert "by Bo Ss (boss)" in cells


def test_a_membership_the_log_never_saw_reads_before_the_log(client, auditor, outsider):
    # A raw insert into the membership table fires no signal: nothing on the record.
    User.groups.through.objects.create(user=outsider, group=Group.objects.get(name=roles.REVIEWERS))
    row = next(r for r in access.access_rows() if r.username == "olga")
    assert [(g.group, g.since, g.unknown) for g in row.roles] == [(roles.REVIEWERS, None, "before the log")]
    client.force_login(auditor)
    assert "before the log" in row_of(client.get("/audit/access/").content.decode(), "olga")


def test_a_grant_to_an_earlier_account_of_the_same_name_is_not_this_ones(outsider):
    reviewers = Group.objects.get(name=roles.REVIEWERS)
    reviewers.user_set.add(outsider)  # on the record for "olga"
    outsider.delete()  # the membership goes with the account, and no signal says so
    again = make_user("olga")
    User.groups.through.objects.create(user=again, group=reviewers)  # by a path the log never saw
    row = next(r for r in access.access_rows() if r.username == "olga")
    assert [(g.group, g.since, g.unknown) for g in row.roles] == [(roles.REVIEWERS, None, "before the log")]


def test_a_role_given_back_by_an_unaudited_path_reads_not_on_the_record(reviewer):
    reviewers = Group.objects.get(name=roles.REVIEWERS)
    reviewers.user_set.remove(reviewer)
    User.groups.through.objects.create(user=reviewer, group=reviewers)
    row = next(r for r in access.access_rows() if r.username == "rex")
    assert [(g.group, g.since, g.unknown) for g in row.roles] == [
        (roles.REVIEWERS, None, "not on the record")
    ]


def test_the_page_carries_no_inline_script_or_style(client, auditor):
    client.force_login(auditor)
    body = client.get("/audit/access/").content.decode()
    assert "style=" not in body and "<script>" not in body and " hx-on" not in body


def test_a_removed_role_leaves_the_current_roles_and_shows_in_the_changes(client, auditor, requester, boss):
    set_groups_in_admin(client, boss, requester, roles.REVIEWERS)  # Requesters → Reviewers

    row = next(r for r in access.access_rows() if r.username == "riley")
    assert [g.group for g in row.roles] == [roles.REVIEWERS]

    client.force_login(auditor)
    page = client.get("/audit/access/").content.decode()
    assert roles.REQUESTERS not in row_of(page, "riley")
    changes = access.role_changes(timezone.now() - timezone.timedelta(hours=1), timezone.now())
    removed = next(c for c in changes if c.change == "removed")
    assert (removed.username, removed.role, removed.actor_username, removed.via) == (
        "riley",
        roles.REQUESTERS,
        "boss",
        "web",
    )
    assert [c.sequence for c in changes] == sorted((c.sequence for c in changes), reverse=True)
    assert re.search(r'<tr data-change="removed">.*?Bo Ss.*?riley.*?Requesters.*?web', page, re.S)

    rows = csv_rows(client.get("/audit/access/changes.csv"))
    assert rows[0] == list(access_views().CHANGE_COLUMNS)
    by_sequence = {int(r[0]): r for r in rows[1:]}
    assert by_sequence[removed.sequence][2:8] == [
        "boss",
        "Bo Ss",
        "riley",
        "removed",
        roles.REQUESTERS,
        "web",
    ]
    assert by_sequence[removed.sequence][1] == audit.utc_iso(removed.at)


def test_an_activation_change_is_a_role_change(client, auditor, reviewer):
    reviewer.is_active = False
    reviewer.save()
    client.force_login(auditor)
    page = client.get("/audit/access/").content.decode()
    assert "deactivated" in row_of(page, "rex")
    assert re.search(r'<tr data-change="deactivated">.*?<td>rex</td>', page, re.S)


def test_last_sign_in_last_action_tokens_and_sign_in_kind(client, auditor, requester):
    signed_in = timezone.now() - timezone.timedelta(days=3)
    User.objects.filter(pk=requester.pk).update(last_login=signed_in)
    audit.record(action="request.cancelled", actor=requester, meaning="Cancelled: request #7")
    newest = audit.record(action="token.created", actor=requester, meaning="Created API token ci")
    for name, revoked in (("ci", None), ("old", timezone.now()), ("nightly", None)):
        ApiToken.objects.create(
            user=requester,
            name=name,
            prefix=name,
            token_hash=name * 8,
            created_at=timezone.now(),
            revoked_at=revoked,
        )
    sso = make_user("sso-sam")
    sso.set_unusable_password()
    sso.save()
    SsoIdentity.objects.create(user=sso, issuer="https://idp.example", subject="sam-1")
    # No usable password and no identity (a service account that only holds tokens): local.
    locked = make_user("no-password")
    locked.set_unusable_password()
    locked.save()

    rows = {r.username: r for r in access.access_rows()}
    riley = rows["riley"]
    assert (riley.last_sign_in, riley.last_action_at, riley.tokens, riley.sign_in) == (
        signed_in,
        newest.created_at,
        2,
        "local",
    )
    assert riley.last_action == "token.created: Created API token ci"
    assert (rows["sso-sam"].sign_in, rows["sso-sam"].tokens, rows["sso-sam"].last_sign_in) == ("SSO", 0, None)
    assert access.sign_in_kind(sso) == "SSO" and access.sign_in_kind(requester) == "local"
    assert rows["no-password"].sign_in == "local"

    client.force_login(auditor)
    cells = row_of(client.get("/audit/access/").content.decode(), "riley")
    assert f'datetime="{signed_in.isoformat()}"' in cells
    assert "Created API token ci" in cells
    assert re.search(r'<td class="num">2</td>', cells)


def test_superuser_and_staff_are_shown_as_roles(boss, stage_admin):
    rows = {r.username: r for r in access.access_rows()}
    assert rows["boss"].role_names == ["superuser", "staff"]
    assert rows["sam"].role_names == [roles.STAGE_ADMINS, "staff"]


# --- the CSV -------------------------------------------------------------------------------------


def access_views():
    from promotions.audit import views

    return views


def test_the_users_csv_has_the_pages_rows_and_neutralises_formulas(client, auditor, requester, boss):
    hostile = '=HYPERLINK("http://evil.example/","click")'
    make_user("mallory", roles.REVIEWERS, first_name=hostile, last_name="")
    set_groups_in_admin(client, boss, requester, roles.REQUESTERS, roles.REVIEWERS)
    client.force_login(auditor)
    page = client.get("/audit/access/").content.decode()
    response = client.get("/audit/access.csv")
    rows = csv_rows(response)

    assert rows[0] == list(access_views().ACCESS_COLUMNS)
    assert [r[0] for r in rows[1:]] == re.findall(r'<tr data-username="([^"]+)">', page)
    mallory = next(r for r in rows if r[0] == "mallory")
    assert mallory[1] == "'" + hostile  # one leading quote: a spreadsheet shows text, not a link
    riley = next(r for r in rows if r[0] == "riley")
    assert riley[2:5] == ["yes", "local", "Requesters;Reviewers"]
    granted = AuditEvent.objects.get(
        action="user.group_added", details__group=roles.REVIEWERS, actor_username="boss"
    )
    assert (
        f"Reviewers: since {audit.utc_iso(granted.created_at)} by Bo Ss (boss) (entry #{granted.sequence})"
        in (riley[5].split(";"))
    )
    assert response["Content-Disposition"].startswith('attachment; filename="access-review-')
    exported = AuditEvent.objects.filter(action="audit.exported").latest("sequence")
    assert (exported.actor_username, exported.details["report"]) == ("alice", "access")


def test_html_in_names_is_escaped_on_the_page(client, auditor):
    make_user("xss", roles.REQUESTERS, first_name="<script>alert(1)</script>", last_name="<b>bold</b>")
    client.force_login(auditor)
    page = client.get("/audit/access/").content.decode()
    assert "<script>alert(1)</script>" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;b&gt;bold&lt;/b&gt;" in row_of(page, "xss")


# --- the period ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        {"from": "yesterday"},
        {"until": "2026-02-30"},
        {"from": "2026-12-01", "until": "2026-11-01"},
        {"from": "\x00"},
        {"until": "9" * 100_000},
        {"until": "9999-12-31"},
        {"from": "²⁰²⁶-01-01"},
    ],
)
def test_a_bad_period_is_refused_with_a_sentence(client, auditor, query):
    client.force_login(auditor)
    page = client.get("/audit/access/", query)
    assert page.status_code == 400
    assert re.search(r'role="alert">[^<]*(date|period|future)[^<]*</p>', page.content.decode())
    assert 'data-username="alice"' in page.content.decode()  # the users table still shows
    export = client.get("/audit/access/changes.csv", query)
    assert export.status_code == 400
    assert re.search(r"(date|period|future)", export.content.decode())


def test_the_period_defaults_to_the_last_90_days_and_days_are_whole_utc_days():
    period = access.parse_period({}, today=date(2026, 12, 3))
    assert (period.start, period.end) == (date(2026, 9, 4), date(2026, 12, 3))
    period = access.parse_period({"from": "2026-11-01", "until": "2026-11-30"})
    assert (audit.utc_iso(period.since), audit.utc_iso(period.until)) == (
        "2026-11-01T00:00:00.000000+00:00",
        "2026-12-01T00:00:00.000000+00:00",
    )


def test_changes_outside_the_period_are_left_out(client, auditor, reviewer):
    Group.objects.get(name=roles.AUDITORS).user_set.add(reviewer)
    today = timezone.now().date()
    client.force_login(auditor)
    inside = client.get("/audit/access/", {"from": today.isoformat(), "until": today.isoformat()})
    assert re.search(r'<tr data-change="granted">.*?<td>rex</td>.*?Auditors', inside.content.decode(), re.S)
    before = (today - timezone.timedelta(days=10)).isoformat()
    earlier = client.get("/audit/access/", {"from": before, "until": before}).content.decode()
    assert "data-change=" not in earlier and "No role was granted" in earlier
    assert len(csv_rows(client.get("/audit/access/changes.csv", {"from": before, "until": before}))) == 1


# --- bounded queries -----------------------------------------------------------------------------


def fill_users(count: int) -> None:
    users = User.objects.bulk_create(
        [User(username=f"u{i:04d}", first_name=f"User {i}", password="!") for i in range(count)]
    )
    reviewers = Group.objects.get(name=roles.REVIEWERS)
    User.groups.through.objects.bulk_create([User.groups.through(user=u, group=reviewers) for u in users])
    now = timezone.now()
    ApiToken.objects.bulk_create(
        [ApiToken(user=u, name="ci", prefix="p", token_hash=f"{u.pk:064d}", created_at=now) for u in users]
    )
    for user in users[: count // 2]:
        audit.record(
            action="user.group_added",
            meaning=f"{user.username} added to Reviewers",
            details={"username": user.username, "group": roles.REVIEWERS},
        )
        audit.record(action="request.cancelled", actor=user, meaning="Cancelled")


@pytest.mark.parametrize("count", [10, 200])
def test_the_page_costs_the_same_queries_at_10_and_200_users(
    client, auditor, django_assert_num_queries, count
):
    fill_users(count)
    client.force_login(auditor)
    # session, user, the frame's roles, last sync and approver stages; users with their token
    # counts, their groups, the grants on record, the newest entry of each actor; the period's
    # role changes. The same at 10 and at 200 users.
    with django_assert_num_queries(10):
        response = client.get("/audit/access/")
    assert response.status_code == 200
    assert response.content.decode().count("<tr data-username=") == count + 1
