"""The delta poll: legacy stage transitions (which send no webhook) reach the mirror within one
poll, for one MLflow call per poll whatever the registry's size, without the watermark ever
skipping a change."""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings

from registry_sync.models import DriftEvent, ModelVersion, RegisteredModel, SyncRun, SyncWatermark
from registry_sync.services import (
    DELTA_OVERLAP_MS,
    DELTA_PAGE_SIZE,
    DELTA_WATERMARK,
    SyncFailed,
    sync_delta,
    sync_registry,
)
from registry_sync.tasks import sync_delta_task
from tests.registry_helpers import make_version, make_versions, stage

pytestmark = pytest.mark.django_db

VERSIONS_SEARCH = "/model-versions/search"


def watermark():
    return SyncWatermark.objects.get(name=DELTA_WATERMARK).last_updated_timestamp


def mirrored_stage(name, version):
    return ModelVersion.objects.get(model__name=name, version=version).current_stage


def mlflow_timestamp(client, name, version):
    return client.get_model_version(name, str(version)).last_updated_timestamp


def poll_calls(proxy):
    """The MLflow calls of one delta poll, as the proxy in front of MLflow saw them."""
    with proxy._lock:
        proxy.calls.clear()
    sync_delta()
    with proxy._lock:
        return list(proxy.calls)


def test_a_stage_transition_reaches_the_mirror_with_the_syncs_own_signals(registry, model_name):
    client = registry.client()
    v1 = make_version(client, model_name)
    make_version(client, model_name)
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    sync_delta()  # the first poll sets the watermark

    stage(client, model_name, v1, "Staging")
    run_id = sync_delta_task()  # what beat runs every SYNC_DELTA_INTERVAL_SECONDS

    assert mirrored_stage(model_name, v1) == "Staging"
    run = SyncRun.objects.get(pk=run_id)
    assert (run.trigger, run.updated, run.error) == (SyncRun.Trigger.DELTA, 1, "")
    # binding_changed reached promotions' receiver, which recorded the change as drift.
    assert run.drift == 1
    event = DriftEvent.objects.get(model__name=model_name)
    assert (event.kind, event.version, event.before, event.after) == ("stage", v1, "None", "Staging")
    assert watermark() == mlflow_timestamp(client, model_name, v1)


def test_a_poll_that_finds_nothing_new_records_no_run_and_writes_nothing(registry, model_name):
    make_version(registry.client(), model_name)
    sync_delta()
    before = SyncRun.objects.count()
    assert sync_delta() is None
    assert SyncRun.objects.count() == before


def test_the_mirrored_aliases_are_kept_when_a_version_changes(registry, model_name):
    # MLflow's search leaves aliases out of its version entities: the model's mirrored map holds.
    client = registry.client()
    v1 = make_version(client, model_name)
    client.set_registered_model_alias(model_name, "champion", str(v1))
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    sync_delta()

    stage(client, model_name, v1, "Production")
    sync_delta()

    version = ModelVersion.objects.get(model__name=model_name, version=v1)
    assert (version.current_stage, version.aliases) == ("Production", ["champion"])


def test_one_mlflow_call_per_poll_at_two_registry_sizes(mlflow_proxy, registry, model_name):
    client = registry.client()
    make_versions(client, model_name, 10)
    sync_delta()
    small_idle = poll_calls(mlflow_proxy)
    stage(client, model_name, 3, "Staging")
    small_change = poll_calls(mlflow_proxy)
    assert mirrored_stage(model_name, 3) == "Staging"

    # More versions than a page: the poll right after their creation pages through them all.
    big = f"{model_name}_big"
    make_versions(client, big, DELTA_PAGE_SIZE + 50)
    assert sum(path.endswith(VERSIONS_SEARCH) for _, path in poll_calls(mlflow_proxy)) >= 2
    assert ModelVersion.objects.filter(model__name=big).count() == DELTA_PAGE_SIZE + 50
    big_idle = poll_calls(mlflow_proxy)
    stage(client, big, 7, "Production")
    big_change = poll_calls(mlflow_proxy)
    assert mirrored_stage(big, 7) == "Production"

    assert len(small_idle) == len(big_idle) == 1
    assert small_idle[0][1].endswith(VERSIONS_SEARCH)
    searches = [path for _, path in small_change + big_change if path.endswith(VERSIONS_SEARCH)]
    assert len(searches) == 2  # one per poll; the rest are the changed version's run data
    assert len(small_change) == len(big_change)


def test_a_change_just_before_the_watermark_is_not_skipped(registry, model_name):
    # Another MLflow worker may commit an update stamped a moment before the newest one a poll
    # saw: the overlap reads that moment again.
    client = registry.client()
    v1 = make_version(client, model_name)
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    sync_delta()
    stage(client, model_name, v1, "Staging")
    changed_at = mlflow_timestamp(client, model_name, v1)
    SyncWatermark.objects.filter(name=DELTA_WATERMARK).update(
        last_updated_timestamp=changed_at + DELTA_OVERLAP_MS - 1
    )

    sync_delta()

    assert mirrored_stage(model_name, v1) == "Staging"
    assert watermark() == changed_at + DELTA_OVERLAP_MS - 1  # forward only, never back


def test_a_failed_poll_keeps_the_watermark_and_the_next_one_catches_up(mlflow_proxy, registry, model_name):
    client = registry.client()
    v1 = make_version(client, model_name)
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    sync_delta()
    before = watermark()
    stage(client, model_name, v1, "Staging")

    mlflow_proxy.mode = "down"
    with pytest.raises(SyncFailed) as failed:
        sync_delta()
    assert failed.value.run.trigger == SyncRun.Trigger.DELTA and failed.value.run.error
    assert watermark() == before
    assert mirrored_stage(model_name, v1) == "None"

    mlflow_proxy.mode = "pass"
    sync_delta()
    assert mirrored_stage(model_name, v1) == "Staging"
    assert watermark() > before


def test_a_version_of_a_model_the_mirror_does_not_know_yet_is_mirrored(registry, model_name):
    sync_delta()
    v1 = make_version(registry.client(), model_name)
    sync_delta()
    assert RegisteredModel.objects.filter(name=model_name).exists()
    assert mirrored_stage(model_name, v1) == "None"


def test_beat_runs_the_delta_poll_first_every_interval():
    name, entry = next(iter(django_settings.CELERY_BEAT_SCHEDULE.items()))
    assert (name, entry["task"]) == ("sync-registry-delta", "registry_sync.sync_delta")
    assert entry["schedule"] == float(django_settings.SYNC_DELTA_INTERVAL_SECONDS) == 10.0
