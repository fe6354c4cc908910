"""Applying approved requests to MLflow: once, with provenance, or failed with a reason."""

import json
import threading
import time
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from promotions import services
from promotions.errors import TransientApplyError
from promotions.models import AuditEvent, PromotionRequest, Review, Stage
from registry_sync.models import DriftEvent, ModelVersion, SyncRun
from registry_sync.services import sync_registry
from tests.apply_helpers import approved_request, registry_with_production
from tests.registry_helpers import stage

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status
TRANSITION = "/model-versions/transition-stage"


def applied_events(request):
    return AuditEvent.objects.filter(action="promotion.applied", request_id=request.pk)


def _calls_since(mlflow_proxy, before):
    """(method, endpoint) of each MLflow call after `before`, without the API prefix."""
    return [(method, path.split("/mlflow/", 1)[-1]) for method, path in mlflow_proxy.calls[before:]]


# the promoted version's four provenance tags: its stage record and the latest promotion's
TAGS = [("POST", "model-versions/set-tag")] * 4


def test_an_approved_request_is_applied_with_provenance(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    registry_with_production(client, model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])

    assert services.promotion_apply(request_id=request.pk) == "applied"

    request.refresh_from_db()
    assert request.status == Status.APPLIED and request.applied_at and request.attempts == 1
    v1, v2 = client.get_model_version(model_name, "1"), client.get_model_version(model_name, "2")
    assert (v1.current_stage, v2.current_stage) == ("Archived", "Production")
    assert v2.tags["promotion.request_id"] == str(request.pk)
    assert v2.tags["promotion.approved_by"] == "rex,rita"  # usernames: printed names change
    assert v2.tags["promotion.applied_at"].endswith("+00:00")
    assert json.loads(v2.tags["promotion.stage.Production"]) == {
        "request": request.pk,
        "approved_by": ["rex", "rita"],
        "at": v2.tags["promotion.applied_at"],
    }
    assert "promotion.stage" not in v2.tags
    event = applied_events(request).get()
    assert event.details["previous_holders"] == [1] and event.details["archived"] == [1]
    assert event.meaning == f"Applied: promote {model_name} v2 to Production"
    # the mirror already shows it, so the next sync sees no drift
    assert ModelVersion.objects.get(model__name=model_name, version=2).current_stage == "Production"
    assert ModelVersion.objects.get(model__name=model_name, version=1).current_stage == "Archived"
    assert sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name).drift == 0
    assert not DriftEvent.objects.exists()


def test_running_twice_changes_mlflow_once(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    registry_with_production(registry.client(), model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])

    assert services.promotion_apply(request_id=request.pk) == "applied"
    assert services.promotion_apply(request_id=request.pk) == "skipped (applied)"

    assert mlflow_proxy.writes(TRANSITION) == 1
    assert applied_events(request).count() == 1


def test_a_crash_after_the_mlflow_write_is_completed_without_a_second_write(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    registry_with_production(client, model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    stage(client, model_name, 2, "Production", archive=True)  # what the crashed attempt did

    assert services.promotion_apply(request_id=request.pk) == "applied"

    assert applied_events(request).get().details["already_in_place"] is True
    assert mlflow_proxy.writes(TRANSITION) == 0


@pytest.mark.django_db(transaction=True)
def test_two_workers_at_once_write_once(mlflow_proxy, registry, model_name, requester, reviewer, reviewer2):
    registry_with_production(registry.client(), model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    barrier, outcomes = threading.Barrier(2), []

    def apply():
        barrier.wait()
        try:
            outcomes.append(services.promotion_apply(request_id=request.pk))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=apply) for _ in range(2)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]

    assert sorted(outcomes) == ["applied", "skipped (applying)"] or sorted(outcomes) == [
        "applied",
        "skipped (applied)",
    ]
    assert mlflow_proxy.writes(TRANSITION) == 1
    assert applied_events(request).count() == 1


def test_mlflow_down_retries_then_fails_and_a_retry_applies(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2, stage_admin, settings
):
    settings.PROMOTION_MAX_ATTEMPTS = 3
    registry_with_production(registry.client(), model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    mlflow_proxy.mode = "down"

    for attempt in (1, 2):
        with pytest.raises(TransientApplyError):
            services.promotion_apply(request_id=request.pk)
        request.refresh_from_db()
        assert (request.status, request.attempts) == (Status.APPROVED, attempt)
        # The proxy answers 503: the page says MLflow answered with an error, not that it is silent.
        assert "answered with an error (HTTP 503)" in request.last_error
        assert "too many 503 error responses" in request.last_error_detail
    assert services.promotion_apply(request_id=request.pk) == "failed"

    request.refresh_from_db()
    assert request.status == Status.FAILED
    assert "MLflow unreachable after 3 attempts" in request.last_error
    assert Review.objects.filter(request=request, stale=False, decision="approve").count() == 2
    assert AuditEvent.objects.filter(action="promotion.failed", request_id=request.pk).count() == 1

    mlflow_proxy.mode = "pass"
    request = services.request_retry(request=request, user=stage_admin)
    assert request.status == Status.APPROVED and request.attempts == 0
    assert services.promotion_apply(request_id=request.pk) == "applied"
    assert registry.client().get_model_version(model_name, "2").current_stage == "Production"


def test_the_backoff_grows_with_jitter_and_stays_below_the_cap(settings):
    settings.PROMOTION_RETRY_BASE_SECONDS, settings.PROMOTION_RETRY_CAP_SECONDS = 2, 60
    delays = {attempt: [services.retry_delay(attempt) for _ in range(50)] for attempt in (1, 3, 10)}
    assert all(2 / 2 * 2 <= d <= 4 for d in delays[1])
    assert all(8 <= d <= 16 for d in delays[3])
    assert all(30 <= d <= 60 for d in delays[10])
    assert len(set(delays[3])) > 1  # jittered
    assert settings.PROMOTION_RETRY_CAP_SECONDS < settings.CELERY_VISIBILITY_TIMEOUT


def test_a_403_fails_at_once_and_leaks_no_credential(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2, monkeypatch, caplog
):
    registry_with_production(registry.client(), model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "deploy-bot")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-s3cret")
    mlflow_proxy.mode = "deny"

    assert services.promotion_apply(request_id=request.pk) == "failed"

    request.refresh_from_db()
    assert request.status == Status.FAILED and request.attempts == 1
    assert "refused the credentials (HTTP 403)" in request.last_error
    everything = (
        request.last_error
        + caplog.text
        + "".join(e.meaning + str(e.details) for e in AuditEvent.objects.all())
    )
    assert "hunter2-s3cret" not in everything


def test_a_version_deleted_in_mlflow_fails_with_that_reason(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    registry_with_production(client, model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    client.delete_model_version(model_name, "2")

    assert services.promotion_apply(request_id=request.pk) == "failed"
    request.refresh_from_db()
    assert request.last_error == f"Version 2 of model '{model_name}' no longer exists in MLflow."
    assert client.get_model_version(model_name, "1").current_stage == "Production"


def test_a_version_moved_to_a_disallowed_stage_fails_and_changes_nothing(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    registry_with_production(client, model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    stage(client, model_name, 2, "Archived")

    assert services.promotion_apply(request_id=request.pk) == "failed"
    request.refresh_from_db()
    assert "is now in Archived in MLflow; Production may be reached from Staging" in request.last_error
    assert mlflow_proxy.writes(TRANSITION) == 0
    assert client.get_model_version(model_name, "1").current_stage == "Production"


def test_an_alias_stage_moves_the_alias_and_records_the_previous_holder(
    mlflow_proxy, registry, model_name, requester, reviewer
):
    from django.contrib.auth.models import Group

    champion = Stage.objects.create(
        name="Champion", position=25, mlflow_alias="champion", required_approvals=1
    )
    champion.approver_groups.add(Group.objects.get(name="Reviewers"))
    client = registry.client()
    registry_with_production(client, model_name)
    client.set_registered_model_alias(model_name, "champion", "1")

    request = approved_request(model_name, requester, [reviewer], target="Champion")
    before = len(mlflow_proxy.calls)
    assert services.promotion_apply(request_id=request.pk) == "applied"

    # the fewest calls: the version (with its aliases), the holder, the move, the four tags
    assert _calls_since(mlflow_proxy, before) == [
        ("GET", "model-versions/get"),
        ("GET", "registered-models/alias"),
        ("POST", "registered-models/alias"),
        *TAGS,
    ]
    assert client.get_model_version_by_alias(model_name, "champion").version == "2"
    assert applied_events(request).get().details["previous_holders"] == [1]
    mirrored = ModelVersion.objects.get(model__name=model_name, version=2)
    assert mirrored.aliases == ["champion"]
    assert sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name).drift == 0


def test_an_alias_mlflow_refuses_fails_with_mlflows_message(
    mlflow_proxy, registry, model_name, requester, reviewer
):
    from django.contrib.auth.models import Group

    bad = Stage.objects.create(name="Weird", position=26, mlflow_alias="v12", required_approvals=1)
    bad.approver_groups.add(Group.objects.get(name="Reviewers"))
    registry_with_production(registry.client(), model_name)
    request = approved_request(model_name, requester, [reviewer], target="Weird")

    assert services.promotion_apply(request_id=request.pk) == "failed"
    request.refresh_from_db()
    assert request.last_error.startswith("MLflow refused the change:")
    assert "alias" in request.last_error.lower()


def test_checks_are_evaluated_again_before_apply(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    registry_with_production(client, model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    production = Stage.objects.get(name="Production")
    production.checks = "metric accuracy >= 0.99"
    production.save()

    assert services.promotion_apply(request_id=request.pk) == "failed"
    request.refresh_from_db()
    assert "Checks no longer pass: metric accuracy >= 0.99 (is 0.93)" in request.last_error
    assert mlflow_proxy.writes(TRANSITION) == 0


def test_a_poison_request_stops_at_the_attempt_bound(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2, settings
):
    settings.PROMOTION_MAX_ATTEMPTS = 2
    registry_with_production(registry.client(), model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    # attempts that crashed their worker left the counter behind them
    PromotionRequest.objects.filter(pk=request.pk).update(attempts=2)

    assert services.promotion_apply(request_id=request.pk) == "failed"
    request.refresh_from_db()
    assert request.last_error == "gave up after 2 attempts"
    assert mlflow_proxy.writes(TRANSITION) == 0


def test_promoting_many_models_through_the_pipeline_costs_the_same_per_promotion(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    """O(models × stages) MLflow calls: the calls per promotion do not grow with the batch."""
    from tests.registry_helpers import make_version

    staging = Stage.objects.get(name="Staging")
    staging.required_approvals = 0
    staging.save()
    client = registry.client()

    def promote_through(count):
        names = [f"{model_name}_{count}_{i}" for i in range(count)]
        for name in names:
            make_version(client, name, metrics={"accuracy": 0.9})
        sync_registry(trigger=SyncRun.Trigger.COMMAND)
        calls = 0
        for name in names:
            request = services.promotion_request_create_through(
                version=services.version_get(model_name=name, version=1, refresh=False),
                stage=Stage.objects.get(name="Production"),
                requested_by=requester,
                justification="batch",
            )
            for _ in range(2):  # Staging, then Production
                before = len(mlflow_proxy.calls)
                assert services.promotion_apply(request_id=request.pk) == "applied"
                calls += len(mlflow_proxy.calls) - before
                services.pipeline_continue(request_id=request.pk)  # as the task does after an apply
                following = PromotionRequest.objects.filter(
                    version=request.version, status=Status.PENDING, stage__name="Production"
                ).first()
                if following:
                    for person in (reviewer, reviewer2):
                        following = services.review_approve(request=following, reviewer=person)
                    request = following
        return calls

    two, four = promote_through(2), promote_through(4)
    assert four == 2 * two
    assert two / (2 * 2) <= 7  # search, run, transition and four tags at the most, whatever the batch


def test_a_legacy_stage_promotion_makes_the_fewest_mlflow_calls(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    """One search answers the version and the holders; writes skip MlflowClient's prompt lookup.

    This pins MLflow's private `_get_registry_client()` (gateway._registry): if an upgrade moves
    it, the writes fail here; if MlflowClient is used again, `registered-models/get` shows up.
    """
    production = Stage.objects.get(name="Production")
    production.checks = "metric accuracy >= 0.5"
    production.save()
    registry_with_production(registry.client(), model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])

    before = len(mlflow_proxy.calls)
    assert services.promotion_apply(request_id=request.pk) == "applied"

    assert _calls_since(mlflow_proxy, before) == [
        ("GET", "model-versions/search"),
        ("GET", "runs/get"),
        ("POST", "model-versions/transition-stage"),
        *TAGS,
    ]
    assert applied_events(request).get().details["previous_holders"] == [1]


def test_a_crash_between_the_move_and_the_tags_writes_the_tags_on_retry(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    registry_with_production(client, model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    stage(client, model_name, 2, "Production", archive=True)  # moved, then the worker died

    assert services.promotion_apply(request_id=request.pk) == "applied"

    assert mlflow_proxy.writes(TRANSITION) == 0
    assert client.get_model_version(model_name, "2").tags["promotion.request_id"] == str(request.pk)
    assert mlflow_proxy.writes("model-versions/set-tag") == 4
    # and a second completion (tags already there) writes nothing at all
    PromotionRequest.objects.filter(pk=request.pk).update(status=Status.APPROVED)
    before = len(mlflow_proxy.calls)
    assert services.promotion_apply(request_id=request.pk) == "applied"
    assert all(method == "GET" for method, _ in _calls_since(mlflow_proxy, before))


def test_a_version_that_became_a_prompt_is_not_promoted(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    registry_with_production(client, model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    client.set_model_version_tag(model_name, "2", "mlflow.prompt.is_prompt", "true")

    assert services.promotion_apply(request_id=request.pk) == "failed"

    request.refresh_from_db()
    # MLflow's reads leave prompts out, so the writes (which skip MlflowClient's own prompt
    # lookup) are never reached
    assert request.last_error == f"Version 2 of model '{model_name}' no longer exists in MLflow."
    assert mlflow_proxy.writes(TRANSITION) == 0
    assert client.get_model_version(model_name, "1").current_stage == "Production"


def _in_thread(function, outcomes: list):
    """Run `function` in a thread with its own database connection, as a second worker would."""

    def run():
        try:
            outcomes.append(function())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_an_apply_slower_than_its_lease_is_never_taken_over(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2, settings
):
    settings.PROMOTION_STUCK_AFTER_SECONDS = 1
    settings.PROMOTION_LEASE_SECONDS = 1
    registry_with_production(registry.client(), model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    mlflow_proxy.hold_paths = (TRANSITION,)
    outcomes, swept, second = [], None, None

    slow = _in_thread(lambda: services.promotion_apply(request_id=request.pk), outcomes)
    try:
        assert mlflow_proxy.held.wait(30)
        time.sleep(2.5)  # the transition is in flight for longer than the lease and the stuck time
        swept = services.requests_sweep()
        # what the sweeper's message would do, if it had published one: a second worker tries
        second = _in_thread(lambda: services.promotion_apply(request_id=request.pk), outcomes)
        second.join(10)
    finally:
        mlflow_proxy.release.set()
        slow.join(60)
        if second is not None:
            second.join(60)

    assert swept == []
    assert sorted(outcomes) == ["applied", "skipped (applying)"]
    assert mlflow_proxy.writes(TRANSITION) == 1
    assert mlflow_proxy.writes("model-versions/set-tag") == 4
    assert applied_events(request).count() == 1
    request.refresh_from_db()
    assert request.status == Status.APPLIED and request.attempts == 1
    assert (request.lease_token, request.lease_expires_at) == ("", None)


@pytest.mark.django_db(transaction=True)
def test_an_attempt_taken_over_after_its_lease_expired_writes_nothing(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    production = Stage.objects.get(name="Production")
    production.checks = "metric accuracy >= 0.5"  # a read (the run) between the version read and the write
    production.save()
    registry_with_production(registry.client(), model_name)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    mlflow_proxy.hold_paths = ("/runs/get",)
    outcomes = []

    stale = _in_thread(lambda: services.promotion_apply(request_id=request.pk), outcomes)
    try:
        assert mlflow_proxy.held.wait(30)
        # The attempt froze (a paused process, a long GC) past its lease: nobody renewed it.
        past = timezone.now() - timedelta(hours=1)
        PromotionRequest.objects.filter(pk=request.pk).update(updated_at=past, lease_expires_at=past)
        mlflow_proxy.hold_paths = ()
        assert services.requests_sweep() == [request.pk]
        assert services.promotion_apply(request_id=request.pk) == "applied"
    finally:
        mlflow_proxy.release.set()  # the frozen attempt wakes up with what it read before
        stale.join(60)

    assert outcomes == ["lost the lease"]
    assert mlflow_proxy.writes(TRANSITION) == 1
    assert mlflow_proxy.writes("model-versions/set-tag") == 4
    request.refresh_from_db()
    assert request.status == Status.APPLIED and request.attempts == 2
    assert applied_events(request).count() == 1
    assert not AuditEvent.objects.filter(action="promotion.failed", request_id=request.pk).exists()
