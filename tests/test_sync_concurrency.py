"""Syncs of the same model at the same moment (webhook, beat, a filing, the command), each on
its own database connection: none fails, and the mirror ends with one row per version."""

import threading

import pytest
from django.db import connections

from registry_sync.models import ModelVersion, RegisteredModel, SyncRun
from registry_sync.services import sync_registry
from tests.registry_helpers import make_version, stage

pytestmark = pytest.mark.django_db(transaction=True)

TRIGGERS = (
    SyncRun.Trigger.WEBHOOK,
    SyncRun.Trigger.SCHEDULE,
    SyncRun.Trigger.REQUEST,
    SyncRun.Trigger.COMMAND,
)


def sync_together(model_name: str) -> list:
    """Run one sync per trigger at once; each outcome is the SyncRun or the exception raised."""
    barrier = threading.Barrier(len(TRIGGERS))
    outcomes: list = [None] * len(TRIGGERS)

    def runner(index: int, trigger: str) -> None:
        try:
            barrier.wait()
            outcomes[index] = sync_registry(trigger=trigger, model_name=model_name)
        except Exception as exc:  # noqa: BLE001 - the test reports whatever escaped
            outcomes[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=runner, args=(i, t)) for i, t in enumerate(TRIGGERS)]
    [thread.start() for thread in threads]
    [thread.join(120) for thread in threads]
    return outcomes


def test_four_syncs_of_a_new_model_at_once_all_succeed(registry, model_name):
    client = registry.client()
    for _ in range(3):
        make_version(client, model_name, metrics={"accuracy": 0.9})
    stage(client, model_name, 1, "Production")
    client.set_registered_model_alias(model_name, "champion", "2")

    for attempt in range(3):  # a race needs a few rounds to show on two cores
        name = f"{model_name}_{attempt}"
        for _ in range(3):
            make_version(client, name, metrics={"accuracy": 0.9})
        client.set_registered_model_alias(name, "champion", "2")

        outcomes = sync_together(name)

        failures = [repr(o) for o in outcomes if not isinstance(o, SyncRun)]
        assert failures == []
        assert RegisteredModel.objects.filter(name=name).count() == 1
        assert sorted(ModelVersion.objects.filter(model__name=name).values_list("version", flat=True)) == [
            1,
            2,
            3,
        ]
        assert ModelVersion.objects.get(model__name=name, version=2).aliases == ["champion"]
        assert sum(run.created for run in outcomes) == 3


def test_four_syncs_of_a_changed_model_at_once_all_succeed(registry, model_name):
    client = registry.client()
    for _ in range(2):
        make_version(client, model_name, metrics={"accuracy": 0.9})
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    stage(client, model_name, 1, "Production")
    make_version(client, model_name, metrics={"accuracy": 0.95})

    outcomes = sync_together(model_name)

    assert [repr(o) for o in outcomes if not isinstance(o, SyncRun)] == []
    assert ModelVersion.objects.filter(model__name=model_name).count() == 3
    assert ModelVersion.objects.get(model__name=model_name, version=1).current_stage == "Production"
