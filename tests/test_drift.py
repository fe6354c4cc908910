"""Drift: a stage or alias change that no request of ours made, told apart by promotions."""

from datetime import timedelta

import pytest
from django.utils import timezone

from promotions.models import AuditEvent, PromotionRequest, Stage
from registry_sync.models import DriftEvent, ModelVersion, RegisteredModel, SyncRun
from registry_sync.services import sync_registry
from registry_sync.signals import binding_changed, versions_changed
from tests.factories import mirror_model, stage, version
from tests.registry_helpers import make_version
from tests.registry_helpers import stage as transition

pytestmark = pytest.mark.django_db


def sync(name):
    return sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=name)


def request_of_ours(row: ModelVersion, target: Stage, user, *, status="applied", age=timedelta(0)):
    when = timezone.now() - age
    return PromotionRequest.objects.create(
        version=row,
        stage=target,
        requested_by=user,
        requested_by_name="Riley",
        justification="drift tests",
        status=status,
        evidence={},
        evidence_sha256="0" * 64,
        created_at=when,
        updated_at=when,
        expires_at=when + timedelta(days=7),
    )


def announce(model: RegisteredModel, **change):
    fields = {"alias": "", "mlflow_timestamp": 1700000000000, **change}
    return binding_changed.send(sender=RegisteredModel, model=model, **fields)


def test_a_stage_change_nobody_asked_for_is_recorded_flagged_and_audited():
    model = mirror_model(versions={1: {}, 2: {}})

    responses = announce(model, version=2, kind="stage", before="None", after="Production")

    event = DriftEvent.objects.get(model=model)
    assert [response for _, response in responses] == [event]
    assert (event.version, event.kind, event.before, event.after, event.mlflow_timestamp) == (
        2,
        "stage",
        "None",
        "Production",
        1700000000000,
    )
    assert RegisteredModel.objects.get(pk=model.pk).has_drift and model.has_drift
    entry = AuditEvent.objects.get(action="registry.drift", model_name=model.name)
    assert entry.meaning == (
        f"Drift: {model.name} v2 moved from None to Production in MLflow without a request"
    )
    assert (entry.version, entry.from_stage, entry.to_stage) == (2, "None", "Production")
    assert entry.details == {
        "kind": "stage",
        "alias": "",
        "before": "None",
        "after": "Production",
        "mlflow_timestamp": 1700000000000,
    }


def test_an_alias_change_is_audited_with_the_alias_as_both_stages():
    model = mirror_model(versions={1: {}, 2: {}}, aliases={"champion": 1})

    announce(model, version=1, kind="alias", alias="champion", before="1", after="")

    entry = AuditEvent.objects.get(action="registry.drift", model_name=model.name)
    assert entry.meaning == (
        f"Drift: {model.name} @champion moved from v1 to nobody in MLflow without a request"
    )
    assert (entry.from_stage, entry.to_stage) == ("@champion", "@champion")
    assert entry.details["before"] == "1" and entry.details["after"] == ""


def test_a_change_made_by_a_request_of_ours_is_not_drift(requester):
    model = mirror_model(versions={1: {"current_stage": "Production"}, 2: {}})
    request_of_ours(version(model, 2), stage("Production"), requester, status="applying")

    moved = announce(model, version=2, kind="stage", before="None", after="Production")
    archived = announce(model, version=1, kind="stage", before="Production", after="Archived")

    assert [response for _, response in moved + archived] == [None, None]
    assert not DriftEvent.objects.exists()
    assert not AuditEvent.objects.filter(action="registry.drift").exists()
    assert not RegisteredModel.objects.get(pk=model.pk).has_drift


def test_an_alias_moved_by_a_request_of_ours_is_not_drift_but_its_removal_is(requester):
    champion = Stage.objects.create(name="Champion", position=40, mlflow_alias="champion")
    model = mirror_model(versions={1: {}, 2: {}}, aliases={"champion": 1})
    request_of_ours(version(model, 2), champion, requester, status="approved")

    announce(model, version=2, kind="alias", alias="champion", before="1", after="2")
    assert not DriftEvent.objects.exists()

    announce(model, version=2, kind="alias", alias="champion", before="2", after="")
    assert DriftEvent.objects.filter(model=model, kind="alias", before="2", after="").count() == 1


def test_a_request_older_than_the_drift_window_does_not_cover_a_change(requester, settings):
    settings.PROMOTION_DRIFT_WINDOW_SECONDS = 600
    model = mirror_model(versions={1: {}, 2: {}})
    request_of_ours(version(model, 2), stage("Production"), requester, age=timedelta(minutes=11))

    announce(model, version=2, kind="stage", before="None", after="Production")
    assert DriftEvent.objects.filter(model=model).count() == 1

    settings.PROMOTION_DRIFT_WINDOW_SECONDS = 900
    announce(model, version=2, kind="stage", before="None", after="Production")
    assert DriftEvent.objects.filter(model=model).count() == 1


def test_a_sync_counts_only_the_changes_recorded_as_drift(registry, model_name, requester):
    client = registry.client()
    v1 = make_version(client, model_name)
    v2 = make_version(client, model_name)
    v3 = make_version(client, model_name)
    transition(client, model_name, v1, "Production")
    sync(model_name)
    model = RegisteredModel.objects.get(name=model_name)
    request_of_ours(version(model, v2), stage("Production"), requester)

    # Ours: v2 to Production, archiving v1. Not ours: v3 to Staging.
    transition(client, model_name, v2, "Production", archive=True)
    transition(client, model_name, v3, "Staging")
    run = sync(model_name)

    assert run.drift == 1
    assert list(DriftEvent.objects.filter(model=model).values_list("version", "before", "after")) == [
        (v3, "None", "Staging")
    ]


def test_a_sync_announces_the_versions_it_changed(registry, model_name):
    client = registry.client()
    make_version(client, model_name)
    v2 = make_version(client, model_name)
    sync(model_name)
    client.set_model_version_tag(model_name, str(v2), "note", "changed")
    heard = []

    def listen(sender, *, run, version_ids, **kwargs):
        heard.append((sender, run.pk, version_ids))

    versions_changed.connect(listen)
    try:
        run = sync(model_name)
    finally:
        versions_changed.disconnect(listen)

    changed = ModelVersion.objects.get(model__name=model_name, version=v2)
    assert run.changed_version_ids == {changed.pk}
    assert heard == [(SyncRun, run.pk, frozenset({changed.pk}))]
