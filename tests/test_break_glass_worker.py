"""Break-glass through the real worker and MLflow: the emergency apply skips the approvals and
nothing else, and the overdue reminder runs on the clock the task is given."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bench.common import wait_until
from promotions import outbox, services
from promotions.models import AuditEvent, PromotionRequest
from promotions.services.emergency import REMIND_TASK
from registry_sync.models import SyncRun
from registry_sync.services import sync_registry
from tests.apply_helpers import registry_with_production
from tests.factories import stage as catalog_stage
from tests.test_apply_worker import wait_for_status
from tests.test_artifact_manifest import files_on_disk, log_model, recorded_request

Status = PromotionRequest.Status
REASON = "v1 serves wrong prices; v2 is the fix"


def test_an_emergency_change_is_applied_by_the_worker_and_reminded_when_overdue(
    registry, model_name, requester, stage_admin, celery_worker
):
    client = registry.client()
    registry_with_production(client, model_name)
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    request = services.promotion_request_create(
        version=services.version_get(model_name=model_name, version=2, refresh=False),
        stage=catalog_stage("Production"),
        requested_by=requester,
        justification="tests pass",
    )

    request = services.request_break_glass(request=request, user=stage_admin, reason=REASON)

    wait_for_status(request, Status.APPLIED, worker=celery_worker)
    assert client.get_model_version(model_name, "2").current_stage == "Production"
    assert client.get_model_version(model_name, "2").tags["promotion.approved_by"] == "sam"
    applied = AuditEvent.objects.get(action="promotion.applied", request_id=request.pk)
    assert applied.details["emergency"] is True
    assert applied.details["approved_by"] == ["Sam Tester (emergency change)"]

    # The worker's clock is the task's argument: three hours after the review was due.
    late = (request.review_due_at + timedelta(hours=3)).isoformat()
    assert outbox.publish(REMIND_TASK, [late])
    overdue = AuditEvent.objects.filter(action="review.retrospective_overdue", request_id=request.pk)
    wait_until(overdue.exists, timeout=60, message=f"no reminder\n{celery_worker.log()[-3000:]}")
    assert "overdue by 3 h" in overdue.get().meaning


@pytest.mark.django_db
def test_model_files_changed_fail_an_emergency_apply_as_any_other(
    settings, registry, model_name, requester, stage_admin
):
    settings.PROMOTION_MANIFEST_CHECK = "full"
    log_model(registry.url, model_name)
    request = services.request_break_glass(
        request=recorded_request(model_name, requester), user=stage_admin, reason=REASON
    )
    (files_on_disk(registry, model_name) / "model.skops").write_bytes(b"not the model that was recorded")

    assert services.promotion_apply(request_id=request.pk) == "failed"

    request.refresh_from_db()
    assert request.status == Status.FAILED and request.is_emergency
    assert request.last_error.startswith("The model files changed after approval: model.skops")
    assert registry.client().get_model_version(model_name, "1").current_stage == "None"
