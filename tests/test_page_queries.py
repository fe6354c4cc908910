"""List pages issue a bounded number of queries, at 10 rows and at 1,000."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from promotions import policy
from promotions.models import PromotionRequest, Review, Stage
from registry_sync.models import ModelVersion, RegisteredModel

pytestmark = pytest.mark.django_db


def fill(count, requester, reviewer):
    production = Stage.objects.get(name="Production")
    models = RegisteredModel.objects.bulk_create([RegisteredModel(name=f"m{i:05d}") for i in range(count)])
    versions = ModelVersion.objects.bulk_create(
        [ModelVersion(model=m, version=1, current_stage="Staging", metrics={"accuracy": 0.9}) for m in models]
    )
    now = timezone.now()
    requests = PromotionRequest.objects.bulk_create(
        [
            PromotionRequest(
                version=v,
                stage=production,
                requested_by=requester,
                requested_by_name="Riley",
                justification="bulk",
                source_stage="Staging",
                evidence={"metrics": {"accuracy": 0.9}},
                evidence_sha256="0" * 64,
                check_results=[
                    {"rule": "metric accuracy >= 0.8", "passed": True, "actual": "0.9", "message": ""}
                ],
                created_at=now,
                updated_at=now,
                expires_at=now + production.request_ttl,
            )
            for v in versions
        ]
    )
    Review.objects.bulk_create(
        [
            Review(
                request=r,
                reviewer=reviewer,
                reviewer_name="Rex",
                decision="approve",
                evidence_sha256="0" * 64,
                created_at=now,
            )
            for r in requests[: count // 2]
        ]
    )
    return requests


@pytest.mark.parametrize("count", [10, 1000])
@pytest.mark.parametrize("tab", ["mine", "open", "recent"])
def test_the_queue(client, requester, reviewer, reviewer2, django_assert_num_queries, count, tab):
    fill(count, requester, reviewer)
    client.force_login(reviewer2)
    # The same at 10 and 1,000 requests. "Waiting for you" counts its rows once: the frame's
    # badge reuses the pager's count; it reads the requests blocked by their checks apart (one
    # query); the other tabs ask which rows of the page are decidable. "Waiting for you" also
    # reads the emergency changes awaiting the reviewer's retrospective review (one query).
    with django_assert_num_queries({"mine": 12, "open": 13, "recent": 10}[tab]):
        response = client.get(f"/?tab={tab}")
    assert response.status_code == 200


@pytest.mark.parametrize("tab", ["mine", "open", "recent"])
def test_the_queue_leaves_the_snapshots_and_file_lists_unread(client, requester, reviewer, reviewer2, tab):
    # A real manifest lists every file of the model; 50 of them decoded per page doubled the
    # page's time in bench/pages.py's fill with 500 files a model.
    fill(10, requester, reviewer)
    PromotionRequest.objects.update(status="applied" if tab == "recent" else "pending")
    client.force_login(reviewer2)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(f"/?tab={tab}")
    assert response.status_code == 200 and "m00009" in response.content.decode()
    row_reads = [
        q["sql"] for q in captured if 'FROM "promotions_promotionrequest"' in q["sql"] and "LIMIT" in q["sql"]
    ]
    assert row_reads
    for sql in row_reads:
        for column in ("evidence", "manifest", "ci_evidence", "metrics", "params"):
            assert f'."{column}"' not in sql


def test_a_user_who_approves_for_no_stage_costs_no_count(client, requester, django_assert_num_queries):
    fill(10, requester, requester)
    client.force_login(requester)
    # No COUNT over the requests for the badge or the pager; one SELECT of the emergency changes
    # awaiting review (none: the user approves for no stage).
    with django_assert_num_queries(8):
        response = client.get("/")
    assert response.status_code == 200
    assert 'title="Requests waiting for your decision">0</span>' in response.content.decode()


@pytest.mark.parametrize("tab", ["mine", "open"])
def test_the_badge_counts_what_waits_for_the_reviewer(client, requester, reviewer, reviewer2, tab):
    fill(10, requester, reviewer)
    waiting = sum(policy.may_decide(reviewer2, r) for r in PromotionRequest.objects.all())
    assert waiting > 0
    client.force_login(reviewer2)
    page = client.get(f"/?tab={tab}").content.decode()
    assert f'title="Requests waiting for your decision">{waiting}</span>' in page
    assert f"Waiting for you ({waiting})" in page


@pytest.mark.parametrize("count", [10, 1000])
def test_a_request_page(client, requester, reviewer, reviewer2, django_assert_max_num_queries, count):
    requests = fill(count, requester, reviewer)
    client.force_login(reviewer2)
    # 13: the panel's 12 and one read of the candidate's and the holder's cached model files
    # (registry_sync.selectors.versions_with_model_files); the 3 s poll reads none of them.
    with django_assert_max_num_queries(13):
        response = client.get(f"/requests/{requests[0].pk}/")
    assert response.status_code == 200
    assert "m00000" in response.content.decode()


def test_the_stage_catalog(client, requester, django_assert_max_num_queries):
    client.force_login(requester)
    with django_assert_max_num_queries(10):
        assert client.get("/stages/").status_code == 200


def test_a_request_page_on_a_signing_stage_costs_no_more(
    client, requester, reviewer, reviewer2, django_assert_max_num_queries
):
    # The signed form's token is made without the database, and the signatures ride on the
    # review rows already read: the same 13 as any request page.
    Stage.objects.filter(name="Production").update(signature_required=True)
    requests = fill(10, requester, reviewer)
    Review.objects.filter(request=requests[0]).update(
        signed_at=timezone.now(),
        signer_username="rex",
        signer_name="Rex",
        signed_meaning="Approved for release",
    )
    client.force_login(reviewer2)
    with django_assert_max_num_queries(13):
        response = client.get(f"/requests/{requests[0].pk}/")
    html = response.content.decode()
    assert 'name="signature_token"' in html and "Signed by Rex (rex)" in html


@pytest.mark.parametrize("count", [1, 30])
def test_the_emergency_changes_page(
    client, requester, reviewer, stage_admin, auditor, django_assert_num_queries, count
):
    """The auditors' list of emergency changes: the same queries for 1 and 30 of them."""
    from promotions import services
    from tests.factories import mirror_model, stage, version

    model = mirror_model("urgent", {n: {"current_stage": "Staging"} for n in range(1, count + 1)})
    for number in range(1, count + 1):
        request = services.promotion_request_create(
            version=version(model, number),
            stage=stage("Production"),
            requested_by=requester,
            justification="x",
        )
        services.request_break_glass(request=request, user=stage_admin, reason="outage")
        services.retrospective_review_give(request=request, reviewer=reviewer, comment="ok")
    client.force_login(auditor)
    with django_assert_num_queries(7):  # as many for 30 changes as for one
        response = client.get("/audit/emergencies/")
    assert response.status_code == 200
    assert response.content.decode().count("data-overdue") == 0


@pytest.mark.parametrize("tab", ["mine", "open"])
def test_the_queue_costs_no_more_with_independent_validators_and_escalations(
    client, requester, reviewer, reviewer2, django_assert_num_queries, tab
):
    requests = fill(10, requester, reviewer)
    Stage.objects.filter(name="Production").update(independent_validation=True)
    ModelVersion.objects.filter(pk__in=[r.version_id for r in requests[:3]]).update(run_user="RITA")
    PromotionRequest.objects.filter(pk__in=[r.pk for r in requests[3:6]]).update(
        escalated_at=timezone.now(), last_escalation_at=timezone.now()
    )
    client.force_login(reviewer2)
    with django_assert_num_queries({"mine": 12, "open": 13}[tab]):
        response = client.get(f"/?tab={tab}")
    assert "Escalated · waiting" in response.content.decode()
