"""Fault tests with real worker processes, the configured broker and the real MLflow server."""

import time

from django.core.management import call_command

from bench.common import wait_until
from promotions import services
from promotions.models import AuditEvent, PromotionRequest, RiskTierRule, Stage
from registry_sync.models import ModelVersion, SyncRun
from registry_sync.services import sync_registry
from tests.apply_helpers import approved_request, registry_with_production
from tests.conftest import broker_unreachable
from tests.registry_helpers import make_version

Status = PromotionRequest.Status
TRANSITION = "/model-versions/transition-stage"


def wait_for_status(request, *statuses, worker, timeout=90):
    def reached():
        request.refresh_from_db()
        return request.status in statuses

    wait_until(reached, timeout=timeout, message=f"{statuses} (is {request.status})\n{worker.log()[-3000:]}")
    return request


def applied_count(request):
    return AuditEvent.objects.filter(action="promotion.applied", request_id=request.pk).count()


def taken_over(request, dead_lease: str) -> bool:
    """True once another attempt holds the dead worker's request: the sweeper re-enqueued it, or a
    broker that redelivers an unacknowledged message by itself (RabbitMQ at once, Redis at its
    visibility timeout) already gave it to the next worker, which claimed a new lease or finished."""
    if services.requests_sweep() == [request.pk]:
        return True
    current = PromotionRequest.objects.get(pk=request.pk)
    return current.status != Status.APPLYING or current.lease_token != dead_lease


def test_the_last_approval_gets_the_version_applied_by_the_worker(
    registry, model_name, requester, reviewer, reviewer2, celery_worker
):
    client = registry.client()
    registry_with_production(client, model_name)

    request = approved_request(model_name, requester, [reviewer, reviewer2])

    wait_for_status(request, Status.APPLIED, worker=celery_worker)
    assert client.get_model_version(model_name, "2").current_stage == "Production"
    assert client.get_model_version(model_name, "1").current_stage == "Archived"
    assert applied_count(request) == 1


def test_mlflow_down_retries_with_backoff_then_fails_with_the_reason(
    mlflow_proxy, model_name, requester, reviewer, reviewer2, worker_factory, registry
):
    registry_with_production(registry.client(), model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    mlflow_proxy.mode = "down"
    worker = worker_factory()

    wait_for_status(request, Status.FAILED, worker=worker, timeout=120)

    assert request.attempts == 3
    assert "MLflow unreachable after 3 attempts" in request.last_error
    assert AuditEvent.objects.filter(action="promotion.failed", request_id=request.pk).count() == 1
    assert request.reviews.filter(stale=False).count() == 2
    assert "retry in" in worker.log()


def test_a_worker_killed_inside_the_mlflow_call_is_recovered_once(
    mlflow_proxy, model_name, requester, reviewer, reviewer2, worker_factory, registry, settings
):
    client = registry.client()
    registry_with_production(client, model_name)
    mlflow_proxy.hold_paths = (TRANSITION,)
    first = worker_factory()
    request = approved_request(model_name, requester, [reviewer, reviewer2])

    assert mlflow_proxy.held.wait(60), first.log()[-3000:]
    first.kill()  # kill -9 while the transition is in flight
    mlflow_proxy.hold_paths = ()
    mlflow_proxy.release.set()  # the in-flight write still lands in MLflow
    wait_until(lambda: client.get_model_version(model_name, "2").current_stage == "Production", timeout=30)
    request.refresh_from_db()
    assert request.status == Status.APPLYING  # MLflow changed, our commit never happened

    second = worker_factory()
    settings.PROMOTION_STUCK_AFTER_SECONDS = 3
    time.sleep(3.5)
    # Whoever comes first takes the expired lease over: the sweeper, or a broker that redelivers
    # the killed worker's unacknowledged message by itself (RabbitMQ, Redis at its timeout).
    assert services.requests_sweep() in ([request.pk], [])

    wait_for_status(request, Status.APPLIED, worker=second)
    assert applied_count(request) == 1
    assert mlflow_proxy.writes(TRANSITION) == 1
    assert AuditEvent.objects.get(action="promotion.applied", request_id=request.pk).details[
        "already_in_place"
    ]


def test_an_approval_while_the_broker_is_down_is_kept_and_swept_once(
    registry, model_name, requester, reviewer, reviewer2, celery_worker
):
    client = registry.client()
    registry_with_production(client, model_name)

    with broker_unreachable():
        request = approved_request(model_name, requester, [reviewer, reviewer2])
    request.refresh_from_db()
    assert request.status == Status.APPROVED and request.enqueued_at is None

    assert services.requests_sweep() == [request.pk]
    wait_for_status(request, Status.APPLIED, worker=celery_worker)
    assert services.requests_sweep() == []
    assert applied_count(request) == 1
    assert client.get_model_version(model_name, "2").current_stage == "Production"


def test_the_cli_waits_for_an_automatic_stage(registry, model_name, requester, celery_worker, capsys):
    staging = Stage.objects.get(name="Staging")
    staging.required_approvals = 0
    staging.save()
    make_version(registry.client(), model_name, metrics={"accuracy": 0.9})

    call_command(
        "request_promotion",
        "--model-name",
        model_name,
        "--version",
        "1",
        "--stage",
        "Staging",
        "--user",
        "riley",
        "--wait",
        "--timeout",
        "90",
    )

    out = capsys.readouterr().out
    assert "Approved" in out.splitlines()[0] or "Pending" in out.splitlines()[0]
    assert out.strip().endswith("Applied")
    assert registry.client().get_model_version(model_name, "1").current_stage == "Staging"


def test_promote_through_files_each_step_after_the_one_before(
    registry, model_name, requester, reviewer, reviewer2, celery_worker
):
    staging = Stage.objects.get(name="Staging")
    staging.required_approvals = 0
    staging.save()
    make_version(registry.client(), model_name, metrics={"accuracy": 0.9})
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)

    first = services.promotion_request_create_through(
        version=services.version_get(model_name=model_name, version=1, refresh=False),
        stage=Stage.objects.get(name="Production"),
        requested_by=requester,
        justification="nightly",
    )
    assert (first.stage.name, first.then_stages) == ("Staging", ["Production"])

    wait_for_status(first, Status.APPLIED, worker=celery_worker)
    second = wait_until(
        lambda: PromotionRequest.objects.filter(version=first.version, stage__name="Production").first(),
        message="the Production step to be filed",
    )
    assert second.status == Status.PENDING and second.requested_by == requester
    for person in (reviewer, reviewer2):
        services.review_approve(request=second, reviewer=person)
    wait_for_status(second, Status.APPLIED, worker=celery_worker)
    assert registry.client().get_model_version(model_name, "1").current_stage == "Production"


def test_a_retry_after_a_crash_records_the_holders_the_crashed_attempt_saw(
    mlflow_proxy, model_name, requester, reviewer, reviewer2, worker_factory, registry, settings
):
    settings.PROMOTION_STUCK_AFTER_SECONDS = 3  # as the workers have it (WORKER_ENV)
    client = registry.client()
    registry_with_production(client, model_name)
    mlflow_proxy.hold_paths = (TRANSITION,)
    first = worker_factory()
    request = approved_request(model_name, requester, [reviewer, reviewer2])

    assert mlflow_proxy.held.wait(60), first.log()[-3000:]
    first.kill()  # the transition (archiving v1) lands in MLflow; our commit never happens
    dead_lease = PromotionRequest.objects.get(pk=request.pk).lease_token
    mlflow_proxy.hold_paths = ()
    mlflow_proxy.release.set()
    wait_until(lambda: client.get_model_version(model_name, "1").current_stage == "Archived", timeout=30)

    second = worker_factory()
    wait_until(lambda: taken_over(request, dead_lease), timeout=30, message="the lease to be taken over")
    wait_for_status(request, Status.APPLIED, Status.FAILED, worker=second)

    assert request.status == Status.APPLIED
    event = AuditEvent.objects.get(action="promotion.applied", request_id=request.pk)
    assert event.details["already_in_place"] is True
    assert (event.details["previous_holders"], event.details["archived"]) == ([1], [1])
    # the mirror shows what MLflow did: v1 archived, one Production version
    assert ModelVersion.objects.get(model__name=model_name, version=1).current_stage == "Archived"
    assert sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name).drift == 0


def test_a_crash_between_the_stage_and_the_alias_is_completed_on_retry(
    mlflow_proxy, model_name, requester, reviewer, reviewer2, worker_factory, registry, settings
):
    settings.PROMOTION_STUCK_AFTER_SECONDS = 3  # as the workers have it (WORKER_ENV)
    production = Stage.objects.get(name="Production")
    production.mlflow_alias = "champion"  # bound to both: the legacy stage and the alias
    production.save()
    client = registry.client()
    registry_with_production(client, model_name)
    client.set_registered_model_alias(model_name, "champion", "1")
    mlflow_proxy.hold_paths, mlflow_proxy.hold_method = ("/registered-models/alias",), "POST"
    mlflow_proxy.drop_held = True  # the alias write never leaves the dying worker
    first = worker_factory()
    request = approved_request(model_name, requester, [reviewer, reviewer2])

    assert mlflow_proxy.held.wait(60), first.log()[-3000:]
    first.kill()  # after the transition, before the alias
    dead_lease = PromotionRequest.objects.get(pk=request.pk).lease_token
    mlflow_proxy.hold_paths = ()
    mlflow_proxy.release.set()
    assert client.get_model_version(model_name, "2").current_stage == "Production"
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"

    second = worker_factory()
    wait_until(lambda: taken_over(request, dead_lease), timeout=30, message="the lease to be taken over")
    wait_for_status(request, Status.APPLIED, Status.FAILED, worker=second)

    assert request.status == Status.APPLIED, request.last_error
    assert client.get_model_version_by_alias(model_name, "champion").version == "2"
    assert mlflow_proxy.writes(TRANSITION) == 1
    assert mlflow_proxy.writes("/registered-models/alias") == 1
    event = AuditEvent.objects.get(action="promotion.applied", request_id=request.pk)
    assert event.details["written"] == ["alias"]
    assert (event.details["previous_holders"], event.details["archived"]) == ([1], [1])
    assert sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name).drift == 0


def test_while_mlflow_is_unreachable_the_page_says_the_worker_is_retrying_then_applied(
    mlflow_proxy, model_name, requester, reviewer, reviewer2, worker_factory, registry, client, settings
):
    settings.PROMOTION_MAX_ATTEMPTS = 5  # the page says "of 5": the same bound as the worker's
    registry_with_production(registry.client(), model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    mlflow_proxy.mode = "hangup"  # the connection closes unanswered, as when MLflow is down
    worker = worker_factory(
        PROMOTION_MAX_ATTEMPTS="5", PROMOTION_RETRY_BASE_SECONDS="2", PROMOTION_RETRY_CAP_SECONDS="4"
    )
    client.force_login(requester)

    def retrying_line():
        body = client.get(f"/requests/{request.pk}/").content.decode()
        return "Retrying: attempt 1 of 5, next try" in body and body

    body = wait_until(
        retrying_line, timeout=60, interval=0.1, message=f"the retry line\n{worker.log()[-3000:]}"
    )
    assert f"MLflow at {mlflow_proxy.url} is not answering." in body
    mlflow_proxy.mode = "pass"

    wait_for_status(request, Status.APPLIED, worker=worker)
    assert request.attempts >= 2 and request.last_error == ""
    assert "Retrying" not in client.get(f"/requests/{request.pk}/").content.decode()
    assert applied_count(request) == 1


def test_a_risk_tier_raised_in_mlflow_after_approval_stops_the_worker_s_apply(
    registry, model_name, requester, reviewer, reviewer2, worker_factory
):
    client = registry.client()
    registry_with_production(client, model_name)
    RiskTierRule.objects.create(stage=Stage.objects.get(name="Production"), tier="high", min_approvals=3)
    request = approved_request(model_name, requester, [reviewer, reviewer2])  # enqueued, no worker yet
    # Raised in MLflow only: the mirror has not seen it when the worker takes the request.
    client.set_registered_model_tag(model_name, "risk_tier", "High")

    worker = worker_factory()
    wait_for_status(request, Status.PENDING, worker=worker)

    assert "2 of the 3 approvals needed still count" in request.last_error
    assert client.get_model_version(model_name, "2").current_stage == "Staging"
    assert applied_count(request) == 0
    assert AuditEvent.objects.filter(action="request.reopened", request_id=request.pk).count() == 1
