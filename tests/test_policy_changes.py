"""Departed reviewers stop counting; a request is held to the stricter of its filing-time and
current policy."""

import pytest

from promotions import services
from promotions.models import AuditEvent, PromotionRequest
from registry_sync.models import ModelVersion
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status


@pytest.fixture
def approved(requester, reviewer, reviewer2):
    model = mirror_model(versions={1: {"current_stage": "Staging"}})
    request = services.promotion_request_create(
        version=version(model, 1), stage=stage("Production"), requested_by=requester, justification="go"
    )
    services.review_approve(request=request, reviewer=reviewer)
    request = services.review_approve(request=request, reviewer=reviewer2)
    assert request.status == Status.APPROVED
    return request


def test_an_approval_by_a_deactivated_reviewer_no_longer_counts_at_apply(
    approved, reviewer2, client, requester
):
    reviewer2.is_active = False
    reviewer2.save()

    assert services.promotion_apply(request_id=approved.pk) == "reopened"

    approved.refresh_from_db()
    assert approved.status == Status.PENDING
    assert "1 of the 2 approvals needed still count" in approved.last_error
    assert AuditEvent.objects.filter(action="request.reopened", request_id=approved.pk).exists()
    assert ModelVersion.objects.get(pk=approved.version_id).current_stage == "Staging"
    client.force_login(requester)
    page = client.get(f"/requests/{approved.pk}/").content.decode()
    assert "Waiting for approvals again" in page


def test_an_approval_by_a_reviewer_removed_from_the_group_no_longer_counts(approved, reviewer):
    reviewer.groups.clear()
    assert services.promotion_apply(request_id=approved.pk) == "reopened"
    approved.refresh_from_db()
    assert approved.status == Status.PENDING


def test_lowering_the_approvals_does_not_push_an_open_request_through(requester, reviewer):
    model = mirror_model(versions={1: {"current_stage": "Staging"}})
    request = services.promotion_request_create(
        version=version(model, 1), stage=stage("Production"), requested_by=requester, justification="go"
    )
    production = stage("Production")
    production.required_approvals = 1
    production.save()

    request = services.review_approve(request=request, reviewer=reviewer)

    assert request.status == Status.PENDING  # filed under two approvals: two it needs
    assert AuditEvent.objects.get(action="review.approved").details["required"] == 2


def test_raising_the_approvals_holds_an_approved_request_back(approved):
    production = stage("Production")
    production.required_approvals = 3
    production.save()
    assert services.promotion_apply(request_id=approved.pk) == "reopened"
