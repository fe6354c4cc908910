"""`manage.py request_promotion`: the CLI files through the same services."""

import subprocess
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from bench.common import ROOT
from promotions.models import PromotionRequest
from tests.conftest import PYTHON, subprocess_env
from tests.registry_helpers import make_version, stage


def run(*args):
    out = StringIO()
    call_command("request_promotion", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_it_files_a_just_registered_version_after_refreshing_the_mirror(registry, model_name, requester):
    version = make_version(registry.client(), model_name, metrics={"accuracy": 0.9})

    out = run("--model-name", model_name, "--version", str(version), "--stage", "Staging", "--user", "riley")

    request = PromotionRequest.objects.get()
    assert out.startswith(
        f"Request #{request.pk}: Pending — {model_name} v{version} → Staging (0/1 approvals)"
    )
    assert (request.via, request.requested_by) == ("cli", requester)
    assert request.justification == "Filed from the command line by riley."


@pytest.mark.django_db
def test_it_lists_check_results(registry, model_name, requester):
    from tests.factories import stage as catalog_stage

    staging = catalog_stage("Staging")
    staging.checks = "metric accuracy >= 0.95"
    staging.save()
    version = make_version(registry.client(), model_name, metrics={"accuracy": 0.9})
    out = run("--model-name", model_name, "--version", str(version), "--stage", "staging", "--user", "riley")
    assert "✗ metric accuracy >= 0.95 (0.9)" in out


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--stage", "Prodution"],
            2,
            "Stage 'Prodution' is not in the stage catalog. Known stages: Staging, Production, Archived.",
        ),
        (["--justification", " "], 2, "A justification is required"),
        (["--version", "99"], 2, "Version 99 of model '{model}' does not exist in MLflow (latest is v1)."),
        (["--stage", "Production"], 2, "Production may be reached from Staging; {model} v1 is in no stage."),
        (["--user", "nobody"], 2, "User 'nobody' does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(registry, model_name, requester, args, code, message):
    make_version(registry.client(), model_name)
    base = {"--model-name": model_name, "--version": "1", "--stage": "Staging", "--user": "riley"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    with pytest.raises(CommandError) as error:
        run(*[item for pair in base.items() for item in pair])
    assert error.value.returncode == code
    assert str(error.value) == message.format(model=model_name) or message.format(model=model_name) in str(
        error.value
    )
    assert "\n" not in str(error.value)
    assert not PromotionRequest.objects.exists()


@pytest.mark.django_db
def test_an_unknown_model_is_named(registry, requester):
    with pytest.raises(CommandError, match="Model 'no_such_model' is not in the MLflow registry."):
        run("--model-name", "no_such_model", "--version", "1", "--stage", "Staging", "--user", "riley")


@pytest.mark.django_db
def test_a_duplicate_exits_1(registry, model_name, requester):
    make_version(registry.client(), model_name)
    args = ("--model-name", model_name, "--version", "1", "--stage", "Staging", "--user", "riley")
    run(*args)
    with pytest.raises(CommandError, match="already exists") as error:
        run(*args)
    assert error.value.returncode == 1


@pytest.mark.django_db
def test_a_version_in_a_disallowed_stage_is_refused(registry, model_name, requester):
    client = registry.client()
    make_version(client, model_name)
    stage(client, model_name, 1, "Archived")
    with pytest.raises(CommandError, match="Staging may be reached from no stage"):
        run("--model-name", model_name, "--version", "1", "--stage", "Staging", "--user", "riley")


@pytest.mark.django_db(transaction=True)
def test_the_process_exit_code_and_message(registry, model_name, requester):
    result = subprocess.run(
        [
            PYTHON,
            "manage.py",
            "request_promotion",
            "--model-name",
            "m",
            "--version",
            "1",
            "--stage",
            "Prodution",
            "--user",
            "riley",
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
    out = run(
        "--model-name", model_name, "--version", "1", "--stage", "Production", "--user", "riley", "--through"
    )
    request = PromotionRequest.objects.get()
    assert (request.stage.name, request.then_stages) == ("Staging", ["Production"])
    assert "then: Production (each filed once the step before is applied)" in out
