"""Filing, reviewing, cancelling and expiring requests through the services."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from promotions import catalog, services
from promotions.errors import (
    AlreadyDecided,
    ChecksFailed,
    DuplicateRequest,
    EvidenceChanged,
    InvalidRequest,
    NotAllowed,
    UnknownStage,
)
from promotions.models import AuditEvent, PromotionRequest, Review
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status


@pytest.fixture
def sales():
    return mirror_model(
        "sales_forecast",
        {
            1: {"current_stage": "Archived", "metrics": {"accuracy": 0.88}},
            3: {"current_stage": "Production", "metrics": {"accuracy": 0.91}},
            5: {"current_stage": "Staging", "metrics": {"accuracy": 0.93}, "params": {"depth": "10"}},
            6: {"current_stage": "None", "metrics": {"accuracy": 0.94}},
        },
    )


def file(sales, number=5, target="Production", user=None, **kwargs):
    return services.promotion_request_create(
        version=version(sales, number),
        stage=stage(target),
        requested_by=user,
        justification=kwargs.pop("justification", "retrained on Q3 data"),
        **kwargs,
    )


def actions(**filters):
    return list(AuditEvent.objects.filter(**filters).order_by("sequence").values_list("action", flat=True))


def test_filing_snapshots_the_evidence_and_audits_it(sales, requester):
    request = file(sales, user=requester)

    assert request.status == Status.PENDING
    assert request.source_stage == "Staging"
    assert request.previous_holder == 3
    assert request.evidence["metrics"] == {"accuracy": 0.93}
    assert request.evidence["params"] == {"depth": "10"}
    assert request.evidence["current_holder"]["version"] == 3
    assert request.evidence["current_holder"]["metrics"] == {"accuracy": 0.91}
    assert len(request.evidence_sha256) == 64
    assert request.requested_by_name == "Riley Tester"
    assert request.expires_at - request.created_at == timedelta(days=7)
    event = AuditEvent.objects.get(action="request.created", request_id=request.pk)
    assert event.meaning == "Requested: promote sales_forecast v5 to Production"
    assert event.actor_name == "Riley Tester"


def test_an_unknown_stage_lists_the_catalog():
    with pytest.raises(UnknownStage) as error:
        catalog.stage_get_by_name("Prodution")
    assert error.value.message == (
        "Stage 'Prodution' is not in the stage catalog. Known stages: Staging, Production, Archived."
    )


def test_stage_names_match_case_insensitively():
    assert catalog.stage_get_by_name("production").name == "Production"


def test_a_justification_is_required(sales, requester):
    with pytest.raises(InvalidRequest, match="justification is required"):
        file(sales, user=requester, justification="   ")
    assert not PromotionRequest.objects.exists()


def test_the_catalog_decides_where_a_version_may_come_from(sales, requester):
    with pytest.raises(InvalidRequest) as error:
        file(sales, number=6, target="Production", user=requester)
    assert error.value.message == (
        "Production may be reached from Staging; sales_forecast v6 is in no stage."
    )
    assert file(sales, number=6, target="Staging", user=requester).status == Status.PENDING
    assert file(sales, number=3, target="Archived", user=requester).status == Status.PENDING


def test_a_version_already_in_the_target_is_refused(sales, requester):
    with pytest.raises(InvalidRequest, match="already holds Production"):
        file(sales, number=3, target="Production", user=requester)


def test_an_inactive_stage_is_refused(sales, requester):
    production = stage("Production")
    production.is_active = False
    production.save()
    with pytest.raises(InvalidRequest, match="not active"):
        file(sales, user=requester)


def test_one_open_request_per_version_and_stage(sales, requester):
    first = file(sales, user=requester)
    with pytest.raises(DuplicateRequest, match=rf"already exists \(#{first.pk}\)"):
        file(sales, user=requester)
    assert PromotionRequest.objects.count() == 1
    assert actions(action="request.created") == ["request.created"]


def test_the_database_refuses_a_second_open_request(sales, requester):
    first = file(sales, user=requester)
    duplicate = PromotionRequest(
        **{
            f.attname: getattr(first, f.attname)
            for f in PromotionRequest._meta.concrete_fields
            if f.name != "id"
        }
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        duplicate.save()


def test_a_closed_request_does_not_block_a_new_one(sales, requester):
    first = file(sales, user=requester)
    services.request_cancel(request=first, user=requester)
    assert file(sales, user=requester).status == Status.PENDING


def test_a_user_without_a_role_cannot_file_and_it_is_audited(sales, outsider):
    with pytest.raises(NotAllowed):
        file(sales, user=outsider)
    assert not PromotionRequest.objects.exists()
    assert actions(action="auth.denied") == ["auth.denied"]


def test_the_requester_never_approves_their_own_request(sales, requester):
    from django.contrib.auth.models import Group

    requester.groups.add(Group.objects.get(name="Reviewers"))
    request = file(sales, user=requester)
    with pytest.raises(NotAllowed, match="your own request"):
        services.review_approve(request=request, reviewer=requester)
    assert not Review.objects.exists()
    denied = AuditEvent.objects.get(action="auth.denied")
    assert denied.request_id == request.pk
    assert "own request" in denied.meaning


def test_only_members_of_the_approver_groups_review(sales, requester, auditor):
    request = file(sales, user=requester)
    with pytest.raises(NotAllowed, match="Only members of Reviewers"):
        services.review_approve(request=request, reviewer=auditor)
    assert actions(action="auth.denied") == ["auth.denied"]
    assert not Review.objects.exists()


def test_production_needs_two_distinct_approvers(sales, requester, reviewer, reviewer2):
    request = file(sales, user=requester)

    request = services.review_approve(request=request, reviewer=reviewer, comment="metrics fine")
    assert request.status == Status.PENDING
    with pytest.raises(AlreadyDecided, match="already reviewed"):
        services.review_approve(request=request, reviewer=reviewer)
    request = services.review_approve(request=request, reviewer=reviewer2)

    assert request.status == Status.APPROVED
    assert request.decided_at is not None
    assert Review.objects.filter(request=request).count() == 2
    assert actions(request_id=request.pk) == [
        "request.created",
        "review.approved",
        "review.approved",
        "request.approved",
    ]
    approved = AuditEvent.objects.get(action="review.approved", actor_username="rex")
    assert approved.meaning == "Approved: promote sales_forecast v5 to Production"
    assert approved.details["comment"] == "metrics fine"


def test_one_approval_promotes_to_staging(sales, requester, reviewer):
    request = file(sales, number=6, target="Staging", user=requester)
    assert services.review_approve(request=request, reviewer=reviewer).status == Status.APPROVED


def test_a_rejection_needs_a_comment_and_decides_the_request(sales, requester, reviewer, reviewer2):
    request = file(sales, user=requester)
    with pytest.raises(InvalidRequest, match="needs a comment"):
        services.review_reject(request=request, reviewer=reviewer, comment=" ")
    request = services.review_reject(request=request, reviewer=reviewer, comment="holdout too small")
    assert request.status == Status.REJECTED
    with pytest.raises(AlreadyDecided, match="already rejected"):
        services.review_approve(request=request, reviewer=reviewer2)
    assert actions(action__startswith="review.") == ["review.rejected"]


def test_a_stale_page_cannot_approve_changed_evidence(sales, requester, reviewer):
    request = file(sales, user=requester)
    with pytest.raises(EvidenceChanged, match="evidence changed"):
        services.review_approve(request=request, reviewer=reviewer, evidence_sha256="0" * 64)


def test_the_requester_or_a_stage_admin_may_cancel(sales, requester, reviewer, stage_admin):
    request = file(sales, user=requester)
    with pytest.raises(NotAllowed):
        services.request_cancel(request=request, user=reviewer)
    assert services.request_cancel(request=request, user=requester).status == Status.CANCELLED
    with pytest.raises(AlreadyDecided):
        services.request_cancel(request=request, user=requester)
    other = file(sales, user=requester)
    assert services.request_cancel(request=other, user=stage_admin).status == Status.CANCELLED
    assert actions(action="request.cancelled") == ["request.cancelled", "request.cancelled"]
    assert actions(action="auth.denied") == ["auth.denied"]


def test_pending_requests_expire_after_their_ttl(sales, requester):
    old = file(sales, user=requester)
    fresh = file(sales, number=6, target="Staging", user=requester)
    PromotionRequest.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(minutes=1))

    assert services.requests_expire() == 1

    old.refresh_from_db()
    fresh.refresh_from_db()
    assert (old.status, fresh.status) == (Status.EXPIRED, Status.PENDING)
    assert actions(action="request.expired") == ["request.expired"]
    assert services.requests_expire() == 0


class TestChecks:
    @pytest.fixture(autouse=True)
    def gated_staging(self):
        staging = stage("Staging")
        staging.checks = "metric accuracy >= 0.95\ntag validation == passed"
        staging.save()
        return staging

    def test_failing_checks_are_recorded_and_block_approval(self, sales, requester, reviewer):
        request = file(sales, number=6, target="Staging", user=requester)
        assert [r["passed"] for r in request.check_results] == [False, False]
        assert request.check_results[0]["actual"] == "0.94"
        with pytest.raises(InvalidRequest, match="Checks must pass"):
            services.review_approve(request=request, reviewer=reviewer)

    def test_an_automatic_stage_refuses_a_request_whose_checks_fail(self, gated_staging, sales, requester):
        gated_staging.required_approvals = 0
        gated_staging.save()
        with pytest.raises(ChecksFailed) as error:
            file(sales, number=6, target="Staging", user=requester)
        assert "metric accuracy >= 0.95 (is 0.94)" in error.value.message
        assert "tag validation == passed (tag 'validation' is missing)" in error.value.message
        assert not PromotionRequest.objects.exists()

    def test_an_automatic_stage_approves_when_every_check_passes(self, gated_staging, requester):
        gated_staging.required_approvals = 0
        gated_staging.save()
        model = mirror_model(versions={1: {"metrics": {"accuracy": 0.97}, "tags": {"validation": "passed"}}})
        request = services.promotion_request_create(
            version=version(model, 1), stage=gated_staging, requested_by=requester, justification="nightly"
        )
        assert request.status == Status.APPROVED
        assert actions(request_id=request.pk) == ["request.created", "request.approved"]
        assert AuditEvent.objects.get(action="request.approved").actor_name == "system"

    def test_evidence_rules_read_the_posted_ci_evidence(self, gated_staging, requester):
        gated_staging.checks = "evidence tests_passed == true\nevidence coverage >= 0.8"
        gated_staging.save()
        model = mirror_model()
        good = services.promotion_request_create(
            version=version(model, 1),
            stage=gated_staging,
            requested_by=requester,
            justification="ci",
            ci_evidence={"tests_passed": True, "coverage": 0.83},
        )
        assert all(r["passed"] for r in good.check_results)


def test_changed_evidence_makes_approvals_stale(sales, requester, reviewer):
    request = file(sales, user=requester)
    services.review_approve(request=request, reviewer=reviewer)
    candidate = version(sales, 5)
    candidate.metrics = {"accuracy": 0.95}
    candidate.save()

    assert services.requests_refresh_evidence(version_ids={candidate.pk}) == 1

    request.refresh_from_db()
    review = Review.objects.get(request=request)
    assert review.stale
    assert review.stale_reason == "Evidence changed: metrics"
    assert request.evidence["metrics"] == {"accuracy": 0.95}
    assert actions(action="request.evidence_changed") == ["request.evidence_changed"]
    # the reviewer must approve again, and may
    assert services.review_approve(request=request, reviewer=reviewer).status == Status.PENDING


def test_a_new_holder_of_the_target_makes_approvals_stale(sales, requester, reviewer):
    request = file(sales, user=requester)
    services.review_approve(request=request, reviewer=reviewer)
    other = version(sales, 6)
    other.current_stage = "Production"
    other.save()
    services.requests_refresh_evidence(version_ids={other.pk})
    review = Review.objects.get(request=request)
    assert review.stale
    assert "holder of the target (v3 → v6)" in review.stale_reason
