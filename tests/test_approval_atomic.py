"""An exception inside the approval's transaction leaves nothing behind: no review, no status
change, no audit entry, no task published."""

import pytest

from promotions import audit, notifications, outbox, services
from promotions.models import AuditEvent, PromotionRequest, Review
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_failure_inside_the_last_approval_rolls_everything_back(
    requester, reviewer, reviewer2, monkeypatch
):
    model = mirror_model(versions={1: {"current_stage": "Staging"}})
    request = services.promotion_request_create(
        version=version(model, 1), stage=stage("Production"), requested_by=requester, justification="go"
    )
    services.review_approve(request=request, reviewer=reviewer)
    entries_before = AuditEvent.objects.count()
    published = []
    monkeypatch.setattr(outbox, "publish", lambda name, args: published.append((name, args)) or True)

    def crash(event, request_id):
        # The last thing the approval does inside its transaction: notify, after the status
        # change and the audit entries were written.
        if event == "request.approved":
            raise RuntimeError("the disk filled up")

    monkeypatch.setattr(notifications, "notify", crash)

    with pytest.raises(RuntimeError):
        services.review_approve(request=request, reviewer=reviewer2)

    request.refresh_from_db()
    assert request.status == PromotionRequest.Status.PENDING
    assert request.decided_at is None and request.enqueued_at is None
    assert not Review.objects.filter(reviewer=reviewer2).exists()
    assert AuditEvent.objects.count() == entries_before
    assert published == []  # the apply task is published only after a commit that never came
    assert audit.verify_database().ok
