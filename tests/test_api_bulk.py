"""Bulk filing: one request per model whose latest eligible version passes the stage's checks,
through `POST /api/requests/bulk` and `manage.py request_promotion --all-passing`."""

import json
import uuid
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from promotions import tokens
from promotions.models import AuditEvent, PromotionRequest
from registry_sync.models import SyncRun
from registry_sync.services import sync_registry
from tests.factories import stage as catalog_stage
from tests.registry_helpers import make_version, stage

pytestmark = pytest.mark.django_db


@pytest.fixture
def staging_with_checks():
    staging = catalog_stage("Staging")
    staging.checks = "metric accuracy >= 0.8\nevidence tests_passed == true"
    staging.save()
    return staging


@pytest.fixture
def prefix():
    # The MLflow server is shared by the whole session: only look at this test's models.
    return f"bulk_{uuid.uuid4().hex[:8]}_"


def build(client, prefix):
    """Models that pass, fail, already hold the stage, or have an open request."""
    make_version(client, prefix + "a_pass", metrics={"accuracy": 0.91})
    make_version(client, prefix + "b_older_passes", metrics={"accuracy": 0.85})
    make_version(client, prefix + "b_older_passes", metrics={"accuracy": 0.55})
    make_version(client, prefix + "c_fails", metrics={"accuracy": 0.5})
    make_version(client, prefix + "d_holds", metrics={"accuracy": 0.9})
    stage(client, prefix + "d_holds", 1, "Staging")
    for index in range(6):
        make_version(client, f"{prefix}e_fails_{index}", metrics={"accuracy": 0.1})


def bulk(client_user, body):
    _, raw = tokens.api_token_create(user=client_user, name="ci")
    from django.test import Client

    return Client(headers={"Authorization": f"Bearer {raw}"}).post(
        "/api/requests/bulk", data=json.dumps(body), content_type="application/json"
    )


def mine(entries, prefix):
    return [entry for entry in entries if entry["model_name"].startswith(prefix)]


def test_it_files_the_latest_passing_version_of_each_model_and_explains_the_rest(
    registry, requester, staging_with_checks, prefix
):
    build(registry.client(), prefix)

    response = bulk(
        requester,
        {"stage": "staging", "justification": "nightly: tests green", "evidence": {"tests_passed": True}},
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["stage"] == "Staging"
    filed = mine(body["filed"], prefix)
    assert [(r["model_name"], r["version"], r["status"]) for r in filed] == [
        (prefix + "a_pass", 1, "pending"),
        (prefix + "b_older_passes", 1, "pending"),
    ]
    assert all(r["via"] == "api" and r["evidence"] == {"tests_passed": True} for r in filed)
    skipped = {s["model_name"]: s["reason"] for s in mine(body["skipped"], prefix)}
    assert skipped[prefix + "c_fails"] == "v1 fails metric accuracy >= 0.8 (is 0.5)"
    assert skipped[prefix + "d_holds"] == "v1 already holds Staging"
    assert len(skipped) == 8
    assert mine(body["refused"], prefix) == []


def test_failing_evidence_files_nothing(registry, requester, staging_with_checks, prefix):
    make_version(registry.client(), prefix + "a", metrics={"accuracy": 0.9})
    body = bulk(
        requester,
        {
            "stage": "Staging",
            "justification": "x",
            "models": [prefix + "a"],
            "evidence": {"tests_passed": False},
        },
    ).json()
    assert body["filed"] == []
    assert body["skipped"] == [
        {
            "model_name": prefix + "a",
            "version": 1,
            "reason": "v1 fails evidence tests_passed == true (is false)",
        }
    ]


def test_a_named_list_limits_the_models_and_names_the_unknown_ones(registry, requester, prefix):
    make_version(registry.client(), prefix + "a", metrics={"accuracy": 0.9})
    make_version(registry.client(), prefix + "b", metrics={"accuracy": 0.9})
    body = bulk(
        requester, {"stage": "Staging", "justification": "x", "models": [prefix + "a", prefix + "ghost"]}
    ).json()
    assert [r["model_name"] for r in body["filed"]] == [prefix + "a"]
    assert body["skipped"] == [
        {
            "model_name": prefix + "ghost",
            "version": None,
            "reason": f"Model '{prefix}ghost' is not in the MLflow registry.",
        }
    ]


def test_an_open_request_is_skipped_not_duplicated(registry, requester, prefix):
    make_version(registry.client(), prefix + "a", metrics={"accuracy": 0.9})
    body = {"stage": "Staging", "justification": "x", "models": [prefix + "a"]}
    first = bulk(requester, body).json()
    again = bulk(requester, body).json()
    assert len(first["filed"]) == 1 and again["filed"] == []
    assert again["skipped"][0]["reason"] == "v1 has an open request to Staging"
    assert PromotionRequest.objects.count() == 1


def test_the_cost_in_mlflow_calls_does_not_grow_with_the_models_looked_at(
    mlflow_proxy, registry, requester, staging_with_checks, prefix
):
    build(registry.client(), prefix)
    sync_registry(trigger=SyncRun.Trigger.COMMAND)  # the mirror is warm, as the periodic sync keeps it
    mlflow_proxy.calls.clear()

    body = bulk(
        requester, {"stage": "Staging", "justification": "x", "evidence": {"tests_passed": True}}
    ).json()

    looked_at = len(mine(body["filed"], prefix)) + len(mine(body["skipped"], prefix))
    assert looked_at == 10
    paths = [path for _, path in mlflow_proxy.calls]
    # One sync: a page of registered models and a page of versions. No call per model or
    # version; what is filed costs its MLflow calls when it is applied.
    assert all(path.endswith("/search") for path in paths), paths
    assert len(paths) <= 4, paths


def test_a_user_without_the_role_gets_403_and_it_is_audited(registry, outsider):
    for stage_name in ("Staging", "Prodution"):  # nothing about the catalog leaks either
        response = bulk(outsider, {"stage": stage_name, "justification": "x"})
        assert response.status_code == 403
    assert AuditEvent.objects.filter(action="auth.denied", actor_username="olga").count() == 2


def test_an_unknown_stage_is_422_listing_the_catalog(registry, requester):
    response = bulk(requester, {"stage": "Prodution", "justification": "x"})
    assert response.status_code == 422
    assert response.json()["message"].endswith("Known stages: Staging, Production, Archived.")


def test_unknown_fields_are_refused(registry, requester):
    response = bulk(requester, {"stage": "Staging", "justification": "x", "requested_by": 3})
    assert response.status_code == 422


# --- the command line -------------------------------------------------------------------------


def run(*args):
    out = StringIO()
    call_command("request_promotion", *args, stdout=out)
    return out.getvalue()


def test_the_cli_files_all_passing_and_lists_each_outcome(
    registry, requester, staging_with_checks, prefix, tmp_path
):
    build(registry.client(), prefix)
    evidence = tmp_path / "evidence.json"
    evidence.write_text('{"tests_passed": true}')

    out = run("--all-passing", "--stage", "Staging", "--user", "riley", "--evidence-file", str(evidence))

    filed = PromotionRequest.objects.filter(version__model__name__startswith=prefix).order_by("id")
    assert [(r.version.model.name, r.via) for r in filed] == [
        (prefix + "a_pass", "cli"),
        (prefix + "b_older_passes", "cli"),
    ]
    assert out.startswith("Staging: ")
    assert f"  filed    #{filed[0].pk} {prefix}a_pass v1 (Pending)" in out
    assert f"  skipped  {prefix}c_fails: v1 fails metric accuracy >= 0.8 (is 0.5)" in out
    assert f"  skipped  {prefix}d_holds: v1 already holds Staging" in out


def test_the_cli_can_limit_all_passing_to_one_model(registry, requester, prefix):
    make_version(registry.client(), prefix + "a", metrics={"accuracy": 0.9})
    make_version(registry.client(), prefix + "b", metrics={"accuracy": 0.9})
    out = run("--all-passing", "--stage", "Staging", "--user", "riley", "--model-name", prefix + "a")
    assert out.splitlines()[0] == "Staging: 1 filed, 0 skipped, 0 refused"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stage", "Staging"], "--model-name and --version are required (or --all-passing)."),
        (["--stage", "Staging", "--model-name", "m"], "--model-name and --version are required"),
        (
            ["--all-passing", "--stage", "Staging", "--version", "3"],
            "--version does not go with --all-passing.",
        ),
        (["--all-passing", "--stage", "Staging", "--wait"], "--wait does not go with --all-passing."),
        (["--all-passing", "--stage", "Prodution"], "Stage 'Prodution' is not in the stage catalog."),
    ],
)
def test_the_cli_refuses_bad_combinations_with_exit_2(registry, requester, args, message):
    with pytest.raises(CommandError) as error:
        run(*args, "--user", "riley")
    assert error.value.returncode == 2
    assert message in str(error.value)
