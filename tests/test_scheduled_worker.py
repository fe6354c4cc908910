"""Scheduled requests with a real worker: the beat task's clock moved by the test, and once for real."""

from datetime import UTC, datetime, timedelta

import pytest
from celery import current_app
from django.utils import timezone

from bench.common import wait_until
from promotions import services
from promotions.models import AuditEvent, PromotionRequest, Stage
from registry_sync.models import SyncRun
from registry_sync.services import sync_registry
from tests.apply_helpers import registry_with_production
from tests.factories import stage as catalog_stage

Status = PromotionRequest.Status
INTERVAL_SECONDS = 2


def scheduled_request(name, requester, reviewers):
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=name)
    request = services.promotion_request_create(
        version=services.version_get(model_name=name, version=2, refresh=False),
        stage=catalog_stage("Production"),
        requested_by=requester,
        justification="tests pass",
    )
    for reviewer in reviewers:
        request = services.review_approve(request=request, reviewer=reviewer)
    assert request.status == Status.SCHEDULED, request.status
    return request


def wait_for(request, status, worker, timeout=90):
    def reached():
        request.refresh_from_db()
        return request.status == status

    wait_until(reached, timeout=timeout, message=f"{status} (is {request.status})\n{worker.log()[-3000:]}")


def test_the_worker_applies_a_scheduled_request_once_the_beat_clock_passes_its_opening(
    registry, model_name, requester, reviewer, reviewer2, celery_worker
):
    client = registry.client()
    registry_with_production(client, model_name)
    day = timezone.now().astimezone(UTC).date() + timedelta(days=3)
    Stage.objects.filter(name="Production").update(deployment_windows=f"{day:%a} 00:00–24:00")
    request = scheduled_request(model_name, requester, [reviewer, reviewer2])
    opening = datetime(day.year, day.month, day.day, tzinfo=UTC)

    # Before the opening the worker's run releases nothing; after it, the request is applied.
    current_app.send_task("promotions.release_scheduled", args=[(opening - timedelta(minutes=1)).isoformat()])
    wait_until(
        lambda: "release_scheduled" in celery_worker.log() and "succeeded" in celery_worker.log(),
        timeout=60,
        message=celery_worker.log()[-3000:],
    )
    request.refresh_from_db()
    assert request.status == Status.SCHEDULED
    current_app.send_task("promotions.release_scheduled", args=[(opening + timedelta(seconds=1)).isoformat()])

    wait_for(request, Status.APPLIED, celery_worker)
    assert client.get_model_version(model_name, "2").current_stage == "Production"
    actions = list(
        AuditEvent.objects.filter(request_id=request.pk).order_by("sequence").values_list("action", flat=True)
    )
    assert actions[-4:] == ["request.approved", "request.scheduled", "request.released", "promotion.applied"]


@pytest.mark.once  # waits on the wall clock for up to a minute
def test_a_window_opening_within_the_minute_gets_the_request_applied_by_the_beat(
    registry, model_name, requester, reviewer, reviewer2, worker_factory, tmp_path
):
    client = registry.client()
    registry_with_production(client, model_name)
    worker = worker_factory(
        options=("--beat", "--schedule-filename", str(tmp_path / "beat-schedule")),
        PROMOTION_SCHEDULE_INTERVAL_SECONDS=str(INTERVAL_SECONDS),
    )
    now = timezone.now().astimezone(UTC)
    opening = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if opening - now < timedelta(seconds=5):
        opening += timedelta(minutes=1)
    closing = opening + timedelta(minutes=10)
    ends = "24:00" if closing.date() != opening.date() else f"{closing:%H:%M}"
    Stage.objects.filter(name="Production").update(deployment_windows=f"{opening:%a %H:%M}–{ends}")
    request = scheduled_request(model_name, requester, [reviewer, reviewer2])
    assert request.scheduled_for == opening

    wait_for(request, Status.APPLIED, worker, timeout=120)
    released = AuditEvent.objects.get(action="request.released", request_id=request.pk)
    lag = (released.created_at - opening).total_seconds()
    print(f"released {lag:.1f} s after the window opened (beat every {INTERVAL_SECONDS} s)")
    assert released.created_at >= opening
    # Measured, with room for a loaded machine: well within a few beat intervals.
    assert lag < 10 * INTERVAL_SECONDS
