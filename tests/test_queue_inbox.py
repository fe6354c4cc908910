"""The queue as a reviewer's inbox: what waits, what is blocked and why, and the page around it."""

from datetime import timedelta

import pytest
from django.utils import timezone

from promotions import services
from promotions.models import AuditEvent, PromotionRequest, Review
from promotions.templatetags.promotions_tags import duration
from registry_sync.models import ModelVersion
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db


@pytest.fixture
def sales():
    return mirror_model(
        "sales_forecast",
        {
            3: {"current_stage": "Production", "metrics": {"accuracy": 0.91}},
            5: {"current_stage": "Staging", "metrics": {"accuracy": 0.931}},
            6: {"current_stage": "Staging", "metrics": {"accuracy": 0.5}},
            7: {"current_stage": "Staging", "metrics": {"accuracy": 0.4}},
            8: {"current_stage": "Staging", "metrics": {"accuracy": 0.3}},
        },
    )


def file(sales, requester, number, justification="Q3 retrain"):
    return services.promotion_request_create(
        version=version(sales, number),
        stage=stage("Production"),
        requested_by=requester,
        justification=justification,
    )


def section(body: str, start: str, end: str) -> str:
    return body.split(start, 1)[1].split(end, 1)[0]


def test_it_shows_requests_with_failing_checks_apart_with_the_failing_rule(
    client, sales, requester, reviewer
):
    production = stage("Production")
    production.checks = "metric accuracy >= 0.9"
    production.save()
    good, bad = file(sales, requester, 5), file(sales, requester, 6)
    assert good.check_results[0]["passed"] and not bad.check_results[0]["passed"]
    client.force_login(reviewer)
    body = client.get("/?tab=mine").content.decode()
    table = section(body, "<tbody>", "</tbody>")
    assert f'name="request_ids" value="{good.pk}"' in table
    assert f"#{bad.pk}" not in table
    blocked = section(body, "Not approvable yet (1)", "</section>")
    assert f"#{bad.pk} sales_forecast v6" in blocked
    assert "metric accuracy &gt;= 0.9 (is 0.5)" in blocked
    assert f'name="request_ids" value="{bad.pk}"' not in body


def test_it_previews_the_justification_truncated_and_escaped(client, sales, requester, reviewer):
    file(sales, requester, 5, justification="<b>bold</b> " + "x" * 200)
    client.force_login(reviewer)
    body = client.get("/?tab=mine").content.decode()
    cell = section(body, 'data-label="Justification" class="justification">', "</td>")
    assert cell.startswith("&lt;b&gt;bold&lt;/b&gt; xxx")
    assert cell.endswith("…") and len(cell) < 120
    assert "<b>bold</b>" not in body


def test_it_gives_the_age_and_the_ttl_in_words(client, sales, requester, reviewer):
    request = file(sales, requester, 5)
    PromotionRequest.objects.filter(pk=request.pk).update(
        created_at=timezone.now() - timedelta(hours=2, minutes=5)
    )
    client.force_login(reviewer)
    body = client.get("/?tab=mine").content.decode()
    assert ">2 h</span>" in section(body, 'data-label="Age">', "</td>")
    assert duration(timedelta(days=7)) == "7 days"
    assert duration(timedelta(days=1)) == "1 day"
    assert duration(timedelta(minutes=5, seconds=9)) == "5 min"
    stages = client.get("/stages/").content.decode()
    assert ", 0:00:00" not in stages
    assert f"<dd>{duration(stage('Production').request_ttl)}</dd>" in stages


def test_every_page_has_a_favicon_and_a_skip_link_to_the_content(client, reviewer):
    client.force_login(reviewer)
    body = client.get("/").content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in body
    assert body.index('<a class="skip-link" href="#content">') < body.index('<header class="frame">')
    assert '<main id="content" tabindex="-1">' in body


def test_the_timeline_folds_the_completing_approval_into_the_click(
    client, sales, requester, reviewer, reviewer2
):
    request = file(sales, requester, 5)
    required = stage("Production").required_approvals
    for who in [reviewer, reviewer2][:required]:
        services.review_approve(
            request=request, reviewer=who, comment="fine", evidence_sha256=request.evidence_sha256
        )
    # The audit log keeps both events; the page shows one entry for the last click.
    actions = list(AuditEvent.objects.filter(request_id=request.pk).values_list("action", flat=True))
    assert actions.count("request.approved") == 1 and actions.count("review.approved") == required
    client.force_login(reviewer)
    body = client.get(f"/requests/{request.pk}/").content.decode()
    timeline = section(body, "<h2>Timeline</h2>", "</ul>")
    assert timeline.count("<li>") == 1 + required  # filed, then one per approving click
    assert timeline.count("Approved for promotion") == 0
    assert f"— approved for promotion ({required} of {required} approvals)" in timeline


@pytest.mark.parametrize("htmx", [False, True])
def test_a_bulk_decision_with_nothing_selected_says_so_beside_the_buttons(
    client, sales, requester, reviewer, htmx
):
    file(sales, requester, 5)
    client.force_login(reviewer)
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    response = client.post("/queue/bulk/", {"decision": "approve", "comment": ""}, **headers)
    assert response.status_code == 422
    body = response.content.decode()
    box = section(body, "data-bulk-box>", "</fieldset>")
    assert "Reject selected" in box
    assert (
        '<ul id="bulk-errors" class="bad" role="alert"><li>Select at least one request and a decision.</li>'
        in box
    )
    assert ("<html" in body) is not htmx  # a whole page without JavaScript, the form's fragment with it


def test_a_refused_bulk_request_says_why_beside_the_buttons_under_htmx(client, sales, requester, reviewer):
    request = file(sales, requester, 5)
    client.force_login(reviewer)
    response = client.post(
        "/queue/bulk/", {"decision": "approve", "request_ids": [request.pk]}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 422
    errors = section(response.content.decode(), '<ul id="bulk-errors"', "</ul>")
    assert f"#{request.pk}: The page did not say which evidence you saw" in errors
    assert not Review.objects.filter(request=request).exists()


def test_reject_selected_asks_for_confirmation(client, sales, requester, reviewer):
    file(sales, requester, 5)
    client.force_login(reviewer)
    body = client.get("/").content.decode()
    assert 'value="reject" class="danger" data-confirm="Reject the selected requests?' in body


def test_the_blocked_section_costs_no_query_per_row(
    client, sales, requester, reviewer, django_assert_num_queries
):
    production = stage("Production")
    production.checks = "metric accuracy >= 0.9"
    production.save()
    file(sales, requester, 5)
    for number in (6, 7, 8):  # three more, each blocked by its checks
        file(sales, requester, number)
    client.force_login(reviewer)
    # The same pin as an unblocked "Waiting for you" in tests/test_page_queries.py.
    with django_assert_num_queries(12):  # 11, and the emergency changes awaiting review
        body = client.get("/?tab=mine").content.decode()
    assert "Not approvable yet (3)" in body


def test_waiting_for_you_and_its_badge_count_only_what_the_reviewer_can_approve_now(
    client, sales, requester, reviewer
):
    production = stage("Production")
    production.checks = "metric accuracy >= 0.9"
    production.save()
    file(sales, requester, 5)
    for number in (6, 7):  # blocked by their checks: not waiting for the reviewer
        file(sales, requester, number)
    client.force_login(reviewer)
    for tab in ("mine", "open"):
        body = client.get(f"/?tab={tab}").content.decode()
        assert 'title="Requests waiting for your decision">1</span>' in body
        assert "Waiting for you (1)" in body
    assert "Not approvable yet (2)" in client.get("/?tab=mine").content.decode()


def test_a_request_whose_checks_pass_after_new_evidence_leaves_the_blocked_section(
    client, sales, requester, reviewer
):
    production = stage("Production")
    production.checks = "metric accuracy >= 0.9"
    production.save()
    blocked = file(sales, requester, 6)
    assert PromotionRequest.objects.get(pk=blocked.pk).checks_blocked
    # The sync finds the version's metric corrected in MLflow: the evidence is taken again.
    ModelVersion.objects.filter(pk=blocked.version_id).update(metrics={"accuracy": 0.95})
    assert services.requests_refresh_evidence(version_ids={blocked.version_id}) == 1
    assert not PromotionRequest.objects.get(pk=blocked.pk).checks_blocked
    client.force_login(reviewer)
    body = client.get("/?tab=mine").content.decode()
    assert "Not approvable yet" not in body
    assert f'name="request_ids" value="{blocked.pk}"' in body
    assert "Waiting for you (1)" in body
