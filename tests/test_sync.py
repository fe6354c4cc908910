"""The registry mirror: incremental sync against a real MLflow server."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bench.common import free_port
from promotions.models import AuditEvent
from registry_sync.models import DriftEvent, ModelVersion, RegisteredModel, SyncRun
from registry_sync.services import SyncFailed, sync_registry
from tests.registry_helpers import make_version, make_versions, stage

pytestmark = pytest.mark.django_db


def sync(name, **kwargs):
    return sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=name, **kwargs)


def writes(queries, *tables):
    return [
        q["sql"]
        for q in queries
        if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
        and any(table in q["sql"] for table in tables)
    ]


def test_it_mirrors_versions_stages_aliases_tags_and_run_data(registry, model_name):
    client = registry.client()
    v1 = make_version(client, model_name, metrics={"accuracy": 0.91}, params={"depth": 8}, tags={"team": "a"})
    v2 = make_version(client, model_name, metrics={"accuracy": 0.93, "rmse": 12.5}, params={"depth": 10})
    stage(client, model_name, v1, "Production")
    client.set_registered_model_alias(model_name, "champion", str(v2))
    client.update_registered_model(model_name, description="forecasts")

    run = sync(model_name)

    assert (run.models_seen, run.versions_seen, run.created, run.error) == (1, 2, 2, "")
    model = RegisteredModel.objects.get(name=model_name)
    assert model.description == "forecasts"
    assert model.aliases == {"champion": v2}
    first = ModelVersion.objects.get(model=model, version=v1)
    second = ModelVersion.objects.get(model=model, version=v2)
    assert first.current_stage == "Production"
    assert first.tags == {"team": "a"}
    assert first.metrics == {"accuracy": 0.91}
    assert first.params == {"depth": "8"}
    assert first.status == "READY"
    assert first.run_id and first.source.startswith("runs:/")
    assert first.creation_timestamp and first.last_updated_timestamp
    assert second.aliases == ["champion"]
    assert second.metrics == {"accuracy": 0.93, "rmse": 12.5}
    assert not DriftEvent.objects.filter(model=model).exists()


def test_a_resync_with_nothing_changed_writes_no_mirror_row(registry, model_name):
    client = registry.client()
    for _ in range(3):
        make_version(client, model_name, metrics={"accuracy": 0.9})
    sync(model_name)

    with CaptureQueriesContext(connection) as queries:
        run = sync(model_name)

    assert (run.created, run.updated, run.deleted) == (0, 0, 0)
    assert (
        writes(queries.captured_queries, "registry_sync_modelversion", "registry_sync_registeredmodel") == []
    )


def test_a_full_resync_rewrites_nothing_that_is_unchanged(registry, model_name):
    make_version(registry.client(), model_name, metrics={"accuracy": 0.9})
    sync(model_name)
    run = sync(model_name, full=True)
    assert (run.created, run.updated) == (0, 0)


def test_queries_grow_with_pages_not_with_versions(registry, model_name):
    client = registry.client()
    small, large = f"{model_name}_small", f"{model_name}_large"
    make_versions(client, small, 25)
    make_versions(client, large, 500)

    # Five pages each: 5 versions a page against 100 versions a page.
    with CaptureQueriesContext(connection) as few:
        assert sync(small, page_size=5).created == 25
    with CaptureQueriesContext(connection) as many:
        assert sync(large, page_size=100).created == 500

    # 20 times the versions in the same number of pages costs at most one more INSERT a page
    # (a page of 100 rows can exceed SQLite's bound-parameter limit and split in two).
    assert len(few.captured_queries) <= len(many.captured_queries) <= len(few.captured_queries) + 5
    assert len(many.captured_queries) <= 8 * 5 + 12

    with CaptureQueriesContext(connection) as resync:
        assert sync(large, page_size=100).updated == 0
    assert len(resync.captured_queries) <= len(many.captured_queries)


def test_changes_made_in_mlflow_are_picked_up_and_flagged_as_drift(registry, model_name):
    client = registry.client()
    v1 = make_version(client, model_name, metrics={"accuracy": 0.9})
    v2 = make_version(client, model_name, metrics={"accuracy": 0.95})
    client.set_registered_model_alias(model_name, "champion", str(v1))
    sync(model_name)

    stage(client, model_name, v2, "Production")
    client.set_registered_model_alias(model_name, "champion", str(v2))
    client.set_model_version_tag(model_name, str(v1), "note", "<b>retired</b>")
    run = sync(model_name)

    assert run.drift == 2
    model = RegisteredModel.objects.get(name=model_name)
    assert model.has_drift
    assert ModelVersion.objects.get(model=model, version=v2).current_stage == "Production"
    assert ModelVersion.objects.get(model=model, version=v1).tags == {"note": "<b>retired</b>"}
    kinds = sorted(DriftEvent.objects.filter(model=model).values_list("kind", "before", "after"))
    assert kinds == [("alias", str(v1), str(v2)), ("stage", "None", "Production")]
    audited = AuditEvent.objects.filter(action="registry.drift", model_name=model_name)
    assert audited.count() == 2
    assert any("moved from None to Production" in e.meaning for e in audited)


def test_new_metrics_of_a_version_are_read_when_the_version_changes(registry, model_name):
    client = registry.client()
    version = make_version(client, model_name, metrics={"accuracy": 0.9})
    sync(model_name)
    row = ModelVersion.objects.get(model__name=model_name, version=version)
    client.log_metric(row.run_id, "f1", 0.7)
    client.set_model_version_tag(model_name, str(version), "evaluated", "yes")
    sync(model_name)
    row.refresh_from_db()
    assert row.metrics == {"accuracy": 0.9, "f1": 0.7}


def test_a_version_deleted_in_mlflow_is_kept_and_marked_deleted(registry, model_name):
    client = registry.client()
    make_version(client, model_name)
    v2 = make_version(client, model_name)
    sync(model_name)
    client.delete_model_version(model_name, str(v2))

    run = sync(model_name)

    assert run.deleted == 1
    row = ModelVersion.objects.get(model__name=model_name, version=v2)
    assert row.is_deleted
    assert ModelVersion.objects.filter(model__name=model_name, is_deleted=False).count() == 1


def test_an_unreachable_mlflow_is_recorded_and_the_mirror_keeps_its_state(registry, model_name, settings):
    make_version(registry.client(), model_name)
    sync(model_name)
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(SyncFailed) as failure:
        sync(model_name)

    assert "not answering" in failure.value.run.error
    assert SyncRun.objects.get(pk=failure.value.run.pk).error
    assert ModelVersion.objects.filter(model__name=model_name, is_deleted=False).count() == 1
    settings.MLFLOW_TRACKING_URI = registry.url
    assert sync(model_name).error == ""


def test_the_command_prints_a_summary(registry, model_name):
    from io import StringIO

    from django.core.management import call_command

    make_version(registry.client(), model_name)
    out = StringIO()
    call_command("sync_registry", "--model", model_name, stdout=out)
    text = out.getvalue()
    assert "models 1, versions 1, created 1, updated 0, deleted 0, drift 0, seconds" in text


def test_the_command_fails_with_the_reason_when_mlflow_is_down(settings):
    from django.core.management import CommandError, call_command

    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CommandError, match="not answering"):
        call_command("sync_registry")


def test_it_mirrors_who_made_the_version_from_its_run(registry, model_name):
    client = registry.client()
    by_riley = make_version(client, model_name, user="riley")
    by_nobody = make_version(client, model_name)

    sync(model_name)

    rows = {v.version: v for v in ModelVersion.objects.filter(model__name=model_name)}
    assert rows[by_riley].run_user == "riley"
    # MLflow's client records "unknown" for a run told no user: the mirror says nobody.
    assert rows[by_nobody].run_user == ""
    # The local server has no sign-in, so MLflow names nobody on the version itself.
    assert rows[by_riley].user_id == (client.get_model_version(model_name, str(by_riley)).user_id or "")
