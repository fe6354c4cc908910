"""`manage.py request_promotion`: the CLI files through the same services."""

import subprocess
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from bench.common import ROOT
from promotions.models import PromotionRequest
from tests.conftest import PYTHON, subprocess_env
from tests.factories import stage as catalog_stage
from tests.registry_helpers import make_version, stage


def request_promotion(*switches, **flags):
    """Run the command in this process, for version 1 to Staging by riley unless told (model_name="m"
    is --model-name m); return what it printed."""
    flags = {"version": 1, "stage": "Staging", "user": "riley", **flags}
    args = [item for name, value in flags.items() for item in (f"--{name.replace('_', '-')}", str(value))]
    out = StringIO()
    call_command("request_promotion", *args, *switches, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_it_files_a_just_registered_version_after_refreshing_the_mirror(registry, model_name, requester):
    version = make_version(registry.client(), model_name, metrics={"accuracy": 0.9})

    out = request_promotion(model_name=model_name, version=version)

    request = PromotionRequest.objects.get()
    assert out.startswith(
        f"Request #{request.pk}: Pending — {model_name} v{version} → Staging (0/1 approvals)"
    )
    assert (request.via, request.requested_by) == ("cli", requester)
    assert request.justification == "Filed from the command line by riley."


@pytest.mark.django_db
def test_it_lists_check_results(registry, model_name, requester):
    staging = catalog_stage("Staging")
    staging.checks = "metric accuracy >= 0.95"
    staging.save()
    version = make_version(registry.client(), model_name, metrics={"accuracy": 0.9})
    out = request_promotion(model_name=model_name, version=version, stage="staging")
    assert "✗ metric accuracy >= 0.95 (0.9)" in out


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("changes", "current_stage", "message"),
    [
        pytest.param(
            {"stage": "Prodution"},
            None,
            "Stage 'Prodution' is not in the stage catalog. Known stages: Staging, Production, Archived.",
            id="an unknown stage",
        ),
        pytest.param({"justification": " "}, None, "A justification is required", id="a blank justification"),
        pytest.param(
            {"model_name": "no_such_model"},
            None,
            "Model 'no_such_model' is not in the MLflow registry.",
            id="an unknown model",
        ),
        pytest.param(
            {"version": 99},
            None,
            "Version 99 of model '{model}' does not exist in MLflow (latest is v1).",
            id="an unknown version",
        ),
        pytest.param(
            {"stage": "Production"},
            None,
            "Production may be reached from Staging; {model} v1 is in no stage.",
            id="a stage not reachable from no stage",
        ),
        pytest.param(
            {"stage": "Staging"},
            "Archived",
            "Staging may be reached from no stage",
            id="a version in a stage the target is not reachable from",
        ),
        pytest.param({"user": "nobody"}, None, "User 'nobody' does not exist", id="an unknown user"),
    ],
)
def test_bad_input_exits_2_with_one_line(registry, model_name, requester, changes, current_stage, message):
    client = registry.client()
    make_version(client, model_name)
    if current_stage:
        stage(client, model_name, 1, current_stage)
    with pytest.raises(CommandError) as error:
        request_promotion(**{"model_name": model_name, **changes})
    assert error.value.returncode == 2
    assert message.format(model=model_name) in str(error.value)
    assert "\n" not in str(error.value)
    assert not PromotionRequest.objects.exists()


@pytest.mark.django_db
def test_a_duplicate_exits_1(registry, model_name, requester):
    make_version(registry.client(), model_name)
    request_promotion(model_name=model_name)
    with pytest.raises(CommandError, match="already exists") as error:
        request_promotion(model_name=model_name)
    assert error.value.returncode == 1


@pytest.mark.django_db(transaction=True)
def test_the_process_exit_code_and_message(registry, model_name, requester):
    result = subprocess.run(
        [
            PYTHON,
            "manage.py",
            "request_promotion",
            *("--model-name", "m", "--version", "1", "--stage", "Prodution", "--user", "riley"),
        ],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "Stage 'Prodution' is not in the stage catalog. Known stages: Staging, Production, Archived."
    )


@pytest.mark.django_db
def test_through_files_the_first_step_and_names_the_rest(registry, model_name, requester):
    make_version(registry.client(), model_name)
    out = request_promotion("--through", model_name=model_name, stage="Production")
    request = PromotionRequest.objects.get()
    assert (request.stage.name, request.then_stages) == ("Staging", ["Production"])
    assert "then: Production (each filed once the step before is applied)" in out
