"""The audit log page: who may read it, filters, keyset pages, the chain line, htmx."""

import re
import time

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from promotions import audit
from promotions.audit import filters, verify
from promotions.models import AuditEvent
from tests.factories import audit_history, sales_forecast_review
from tests.tampering import tamper, tampering_db

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_cache():
    # The chain line is cached per chain head; each test starts from what it builds.
    cache.clear()
    yield
    cache.clear()


def rows_of(body: str) -> list[int]:
    """Sequence numbers of the table rows, in page order."""
    return [int(n) for n in re.findall(r'<tr>\s*<td class="num">(\d+)</td>', body)]


def record_history(requester, reviewer):
    """A small, varied log: two models, two stages, two actors."""
    sales_forecast_review(requester, reviewer)
    audit.record(
        action="request.created",
        actor=requester,
        meaning="Requested: promote churn v12 to Staging",
        model_name="churn",
        version=12,
        from_stage="None",
        to_stage="Staging",
        request_id=42,
        details={"justification": "holdout eval green"},
    )


def test_it_lists_events_newest_first_with_what_an_auditor_needs(client, auditor, requester, reviewer):
    record_history(requester, reviewer)
    approved = AuditEvent.objects.get(action="review.approved")
    client.force_login(auditor)
    response = client.get("/audit/")
    body = response.content.decode()
    assert response.status_code == 200
    sequences = rows_of(body)
    assert sequences == sorted(sequences, reverse=True)
    assert sequences[0] == AuditEvent.objects.order_by("-sequence").first().sequence
    # the approval's row: time in UTC in the title, printed name, meaning, model, move, request link
    iso = approved.created_at.isoformat()
    assert f'<time datetime="{iso}"' in body
    assert f'title="{approved.created_at:%Y-%m-%d %H:%M:%S} UTC"' in body
    assert "Rex Tester" in body
    assert "Approved: promote sales_forecast v5 to Production" in body
    assert "sales_forecast v5" in body and "Staging → Production" in body
    assert 'href="/requests/41/"' in body
    assert "<details><summary>details</summary>" in body and "metrics fine" in body
    for name in ("Export CSV", "Export JSONL", "Manifest"):
        assert f">{name}</a>" in body


@pytest.mark.parametrize(
    ("query", "expected_actions"),
    [
        ("model=churn", ["request.created"]),
        ("stage=production", ["review.approved", "request.created"]),  # catalog names, any case
        ("actor=rex", ["review.approved"]),
        ("action=request.created", ["request.created", "request.created"]),
        ("text=churn", ["request.created"]),
        ("text=HOLDOUT", ["request.created"]),  # the requester's justification, any case
        ("text=metrics%20fine", ["review.approved"]),  # the reviewer's comment
        ("model=sales_forecast&actor=riley", ["request.created"]),
    ],
)
def test_filters_narrow_the_list(client, auditor, requester, reviewer, query, expected_actions):
    start = AuditEvent.objects.order_by("-sequence").first().sequence  # the migrations' entries
    record_history(requester, reviewer)
    client.force_login(auditor)
    body = client.get(f"/audit/?{query}").content.decode()
    shown = re.findall(r'<tr>\s*<td class="num">(\d+)</td>.*?<td><code>([a-z_.]+)</code></td>', body, re.S)
    assert [action for sequence, action in shown if int(sequence) > start] == expected_actions


def test_the_stage_filter_matches_the_source_stage_too(client, auditor, requester, reviewer):
    record_history(requester, reviewer)
    client.force_login(auditor)
    body = client.get("/audit/?stage=Staging").content.decode()
    # churn comes *to* Staging; sales_forecast comes *from* Staging
    assert "churn v12" in body and "sales_forecast v5" in body


def test_time_filters_take_dates_and_iso_datetimes(client, auditor, requester, reviewer):
    record_history(requester, reviewer)
    client.force_login(auditor)
    second = AuditEvent.objects.get(action="review.approved")
    day = second.created_at.date().isoformat()
    assert rows_of(client.get(f"/audit/?since={day}&until={day}").content.decode())
    assert rows_of(client.get("/audit/?until=2000-01-01").content.decode()) == []
    moment = second.created_at.isoformat()
    body = client.get(f"/audit/?since={moment.replace('+', '%2B')}&model=sales_forecast").content.decode()
    assert rows_of(body) == [second.sequence]
    naive_utc = second.created_at.strftime("%Y-%m-%dT%H:%M:%S.%f")
    body = client.get(f"/audit/?until={naive_utc}&model=sales_forecast").content.decode()
    assert second.sequence in rows_of(body)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("since=2026-13-45", "is not a valid date"),
        ("until=yesterday", "is not a date (2026-11-25) or an ISO 8601 date and time"),
        ("since=2026-11-02&until=2026-11-01", "is after the end"),
        ("stage=Prodution", "Stage &#x27;Prodution&#x27; is not in the stage catalog. Known stages: Staging"),
        ("action=request.exploded", "Action &#x27;request.exploded&#x27; is not one the audit log records"),
        ("before=abc", "must be an entry&#x27;s sequence number"),
    ],
)
def test_bad_filters_are_a_400_that_says_why(client, auditor, query, reason):
    client.force_login(auditor)
    response = client.get(f"/audit/?{query}")
    assert response.status_code == 400
    body = response.content.decode()
    assert reason in body
    assert 'role="alert"' in body
    assert rows_of(body) == []


def test_the_action_menu_offers_every_action_the_log_records(client, auditor):
    client.force_login(auditor)
    menu = re.search(r'<select id="id_action".*?</select>', client.get("/audit/").content.decode(), re.S)
    offered = re.findall(r'<option value="([^"]+)"', menu.group(0))
    assert offered == sorted(audit.AuditAction.values)


def test_an_action_no_longer_recorded_still_finds_its_entries(client, auditor, monkeypatch):
    audit.record(action="token.created", meaning="Token created")
    monkeypatch.setattr(
        filters, "KNOWN_ACTIONS", tuple(a for a in filters.KNOWN_ACTIONS if a != "token.created")
    )
    client.force_login(auditor)
    response = client.get("/audit/?action=token.created")
    assert response.status_code == 200
    assert "Token created" in response.content.decode()


@pytest.mark.parametrize(
    "url",
    [
        "/audit/",
        "/audit/export.csv",
        "/audit/export.jsonl",
        "/audit/manifest.json?format=csv",
        "/audit/metrics/",
    ],
)
@pytest.mark.parametrize("persona", ["requester", "reviewer", "stage_admin", "outsider"])
def test_only_auditors_get_in_and_refusals_are_audited(client, request, url, persona):
    user = request.getfixturevalue(persona)
    client.force_login(user)
    before = AuditEvent.objects.count()
    response = client.get(url)
    assert response.status_code == 403
    denial = AuditEvent.objects.order_by("-sequence").first()
    assert AuditEvent.objects.count() == before + 1
    assert denial.action == "auth.denied"
    assert denial.actor_username == user.username
    assert "not an auditor" in denial.meaning
    assert audit.verify_database().ok


def test_a_superuser_may_read_the_log(client):
    admin = User.objects.create_superuser("root", password="pw-root")
    client.force_login(admin)
    assert client.get("/audit/").status_code == 200


def test_anonymous_visitors_are_sent_to_log_in(client):
    response = client.get("/audit/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_pages_go_back_by_sequence_without_offset(client, auditor):
    audit_history(120)
    newest = AuditEvent.objects.order_by("-sequence").first().sequence
    client.force_login(auditor)
    first = client.get("/audit/?action=registry.drift").content.decode()
    assert rows_of(first) == list(range(newest, newest - 50, -1))
    older = re.search(r'href="\?([^"]*before=(\d+))" rel="next"', first)
    assert older and int(older.group(2)) == newest - 49
    with CaptureQueriesContext(connection) as queries:
        second = client.get("/audit/?" + older.group(1).replace("&amp;", "&")).content.decode()
    assert rows_of(second) == list(range(newest - 50, newest - 100, -1))
    assert not any("OFFSET" in q["sql"].upper() for q in queries.captured_queries)
    third_link = re.search(r'href="\?([^"]*before=\d+)" rel="next"', second).group(1).replace("&amp;", "&")
    third = client.get("/audit/?" + third_link).content.decode()
    assert len(rows_of(third)) == 20
    assert 'rel="next"' not in third
    # and forward again from the last page
    newer_link = re.search(r'href="\?([^"]*after=\d+)" rel="prev"', third).group(1).replace("&amp;", "&")
    assert rows_of(client.get("/audit/?" + newer_link).content.decode()) == rows_of(second)


@pytest.mark.parametrize("events", [10, 1000])
def test_the_page_costs_the_same_queries_at_any_size(client, auditor, django_assert_max_num_queries, events):
    audit_history(events, model_name="m", details=lambda i: {"i": i})
    client.force_login(auditor)
    # the first view walks the chain (one query per 5,000 entries), the cached ones do not
    # One of them counts the emergency changes whose retrospective review is overdue.
    with django_assert_max_num_queries(13):
        response = client.get("/audit/?model=m&stage=Staging&action=registry.drift")
    assert response.status_code == 200
    with django_assert_max_num_queries(9):
        response = client.get("/audit/")
    assert len(rows_of(response.content.decode())) == min(50, AuditEvent.objects.count())


def test_the_chain_line_says_it_verifies(client, auditor):
    audit.record(action="registry.drift", meaning="fine")
    client.force_login(auditor)
    body = client.get("/audit/").content.decode()
    assert "✓ The chain verifies" in body


def tamper_meaning(sequence: int) -> None:
    tamper("UPDATE promotions_auditevent SET meaning = 'edited' WHERE sequence = %s", [sequence])


@tampering_db
def test_the_chain_line_names_the_first_broken_entry(client, auditor):
    events = audit_history(3)
    tamper_meaning(events[1].sequence)
    client.force_login(auditor)
    body = client.get("/audit/").content.decode()
    assert f"✗ The chain is broken at entry #{events[1].sequence}: its hash does not match" in body


def walks_of(queries) -> list[str]:
    """The chain walks among captured queries: SELECTs over audit entries by sequence."""
    return [
        q["sql"]
        for q in queries.captured_queries
        if 'FROM "promotions_auditevent"' in q["sql"]
        and 'ORDER BY "promotions_auditevent"."sequence" ASC' in q["sql"]
    ]


def test_after_one_full_walk_the_line_walks_only_new_entries(client, auditor):
    audit_history(3)
    client.force_login(auditor)
    with CaptureQueriesContext(connection) as first:
        client.get("/audit/")
    assert len(walks_of(first)) == 1 and "WHERE" not in walks_of(first)[0]
    known = AuditEvent.objects.order_by("-sequence").first().sequence
    newest = audit.record(action="registry.drift", meaning="entry 3")
    with CaptureQueriesContext(connection) as second:
        body = client.get("/audit/").content.decode()
    (walk,) = walks_of(second)
    assert f'"promotions_auditevent"."sequence" > {known}' in walk
    assert f"✓ The chain verifies: {newest.sequence} entries" in body


@tampering_db
def test_a_new_entry_edited_behind_the_databases_back_is_still_caught(client, auditor):
    audit.record(action="registry.drift", meaning="entry 0")
    client.force_login(auditor)
    assert "✓ The chain verifies" in client.get("/audit/").content.decode()
    newest = audit.record(action="registry.drift", meaning="entry 1")
    tamper_meaning(newest.sequence)
    body = client.get("/audit/").content.decode()
    assert f"✗ The chain is broken at entry #{newest.sequence}: its hash does not match" in body


def test_a_remembered_prefix_of_another_log_is_not_trusted(client, auditor):
    event = audit.record(action="registry.drift", meaning="entry 0")
    # e.g. the database was restored from a backup since the prefix was verified
    cache.set(verify.CHAIN_PREFIX_KEY, (event.sequence, "f" * 64, time.time()), 600)
    client.force_login(auditor)
    body = client.get("/audit/").content.decode()
    assert f"✓ The chain verifies: {event.sequence} entries" in body


def test_export_links_carry_the_filters_and_the_page_head(client, auditor, requester, reviewer):
    record_history(requester, reviewer)
    head = AuditEvent.objects.order_by("-sequence").first().sequence
    client.force_login(auditor)
    body = client.get("/audit/?model=sales_forecast&stage=production").content.decode()
    expected = f"model=sales_forecast&amp;stage=Production&amp;through={head}"
    assert f'href="/audit/export.csv?{expected}"' in body
    assert f'href="/audit/export.jsonl?{expected}"' in body
    assert f'href="/audit/manifest.json?{expected}&amp;format=csv"' in body


def test_htmx_swaps_only_the_results(client, auditor, requester, reviewer):
    record_history(requester, reviewer)
    client.force_login(auditor)
    response = client.get("/audit/?model=churn", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<div id="audit-results">')
    assert "<html" not in body and 'class="filters"' not in body
    assert "churn v12" in body and "sales_forecast" not in body


def test_htmx_with_a_bad_filter_swaps_the_reason_in_under_the_filters(client, auditor):
    client.force_login(auditor)
    response = client.get("/audit/?since=never", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 400
    assert "HX-Redirect" not in response
    assert body.lstrip().startswith('<div id="audit-results">')
    assert "is not a date" in body


def test_the_page_keeps_the_csp_no_inline_styles_or_scripts(client, auditor, requester, reviewer):
    record_history(requester, reviewer)
    client.force_login(auditor)
    body = client.get("/audit/").content.decode()
    assert "style=" not in body
    assert "hx-on" not in body
    assert not re.search(r"<script(?![^>]*\bsrc=)", body)
