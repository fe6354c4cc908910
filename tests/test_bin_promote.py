"""`bin/promote`, the standalone CI client, as a subprocess against a live server."""

import json
import subprocess
import time

import pytest

from bench.common import ROOT, free_port, wait_until
from promotions import services, tokens
from promotions.models import PromotionRequest, Stage
from tests.conftest import PYTHON
from tests.registry_helpers import make_version
from tests.registry_helpers import stage as move

pytestmark = pytest.mark.django_db(transaction=True)
PROMOTE = str(ROOT / "bin" / "promote")


def promote(*args, url, token, timeout=120, popen=False, input=None, **env):
    """Run bin/promote with PROMOTE_URL and PROMOTE_TOKEN set; env adds or overrides variables."""
    # -S: no site-packages at all, so the script may only use the standard library.
    environment = {"PATH": "/usr/bin:/bin", "PROMOTE_URL": url, "PROMOTE_TOKEN": token, **env}
    command = [PYTHON, "-I", "-S", PROMOTE, *args]
    if popen:
        return subprocess.Popen(
            command, env=environment, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    return subprocess.run(
        command, env=environment, input=input, text=True, capture_output=True, timeout=timeout
    )


def version_1_to(model_name, stage="Staging", *more):
    """The flags that ask for version 1 of model_name in stage."""
    return ("--model-name", model_name, "--version", "1", "--stage", stage, *more)


def token_for(user):
    return tokens.api_token_create(user=user, name="ci")[1]


@pytest.fixture
def version_1(registry, model_name):
    make_version(registry.client(), model_name, metrics={"accuracy": 0.9})
    return model_name


def test_it_files_a_request_and_exits_0(live_server, version_1, requester, tmp_path):
    evidence = tmp_path / "evidence.json"
    evidence.write_text(json.dumps({"tests_passed": True, "ci_run": "https://ci.example/7"}))

    result = promote(
        *version_1_to(version_1, "staging", "--justification", "CI run 7", "--evidence-file", str(evidence)),
        url=live_server.url,
        token=token_for(requester),
    )

    assert result.returncode == 0, result.stderr
    request = PromotionRequest.objects.get()
    assert result.stdout.splitlines()[0] == (
        f"Request #{request.pk}: Pending — {version_1} v1 → Staging (0/1 approvals)"
    )
    assert (request.via, request.justification) == ("api", "CI run 7")
    assert request.ci_evidence == {"tests_passed": True, "ci_run": "https://ci.example/7"}


def test_it_waits_and_exits_1_when_the_request_is_rejected(live_server, version_1, requester, reviewer):
    process = promote(
        *version_1_to(version_1, "Staging", "--wait", "--interval", "0.2"),
        url=live_server.url,
        token=token_for(requester),
        popen=True,
    )
    try:
        request = wait_until(lambda: PromotionRequest.objects.first(), timeout=60, message="the request")
        services.review_reject(request=request, reviewer=reviewer, comment="needs a holdout evaluation")
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1, err
    assert f"Request #{request.pk}: Rejected" in out
    assert (
        f"promote: Request #{request.pk} ended rejected: Rex Tester wrote: needs a holdout evaluation" in err
    )


@pytest.mark.worker
def test_it_waits_for_an_automatic_stage_and_exits_0_once_applied(
    live_server, version_1, requester, registry, celery_worker
):
    staging = Stage.objects.get(name="Staging")
    staging.required_approvals = 0
    staging.checks = "evidence tests_passed == true"
    staging.save()
    result = promote(
        *version_1_to(version_1),
        *("--evidence-file", "/dev/stdin", "--wait", "--interval", "0.5", "--timeout", "90"),
        input='{"tests_passed": true}',
        url=live_server.url,
        token=token_for(requester),
    )
    assert result.returncode == 0, result.stderr + celery_worker.log()[-2000:]
    assert result.stdout.strip().endswith("Applied")
    assert registry.client().get_model_version(version_1, "1").current_stage == "Staging"


def unknown_token(requester, outsider):
    return "prm_not-a-token"


def revoked_token(requester, outsider):
    token, raw = tokens.api_token_create(user=requester, name="old")
    tokens.api_token_revoke(token=token, user=requester)
    return raw


def outsiders_token(requester, outsider):
    return token_for(outsider)


def requesters_token(requester, outsider):
    return token_for(requester)


@pytest.mark.parametrize(
    ("token", "stage", "message"),
    [
        pytest.param(
            unknown_token, "Staging", "HTTP 401: The token is unknown or revoked.", id="an unknown token"
        ),
        pytest.param(
            revoked_token, "Staging", "HTTP 401: The token is unknown or revoked.", id="a revoked token"
        ),
        pytest.param(
            outsiders_token,
            "Staging",
            "HTTP 403: You are not allowed to file promotion requests (ask for the Requesters role).",
            id="a token without the role",
        ),
        pytest.param(
            requesters_token,
            "Prodution",
            "Stage 'Prodution' is not in the stage catalog. Known stages: Staging, Production, Archived.",
            id="an unknown stage, the catalog listed",
        ),
    ],
)
def test_a_refused_request_exits_2_with_the_servers_message(
    live_server, requester, outsider, version_1, token, stage, message
):
    result = promote(*version_1_to(version_1, stage), url=live_server.url, token=token(requester, outsider))
    assert result.returncode == 2
    assert result.stderr.strip() == f"promote: {message}"
    assert not PromotionRequest.objects.exists()


def test_a_duplicate_open_request_exits_1(live_server, requester, version_1):
    token = token_for(requester)
    assert promote(*version_1_to(version_1), url=live_server.url, token=token).returncode == 0
    again = promote(*version_1_to(version_1), url=live_server.url, token=token)
    assert again.returncode == 1
    assert "An open request for" in again.stderr


def test_a_rerun_with_wait_follows_the_open_request_instead_of_failing(live_server, requester, version_1):
    token = token_for(requester)
    assert promote(*version_1_to(version_1), url=live_server.url, token=token).returncode == 0
    request = PromotionRequest.objects.get()
    again = promote(
        *version_1_to(version_1, "Staging", "--wait", "--timeout", "1", "--interval", "0.2"),
        url=live_server.url,
        token=token,
    )
    assert f"Following the open request #{request.pk}" in again.stdout
    assert f"Request #{request.pk} is still pending after 1 s." in again.stderr
    assert again.returncode == 1
    assert PromotionRequest.objects.count() == 1


@pytest.mark.worker
def test_a_pipeline_rerun_follows_its_request_through_approval_and_a_later_rerun_exits_0(
    live_server, requester, reviewer, version_1, registry, celery_worker
):
    token = token_for(requester)
    waiting = ("--wait", "--interval", "0.3", "--timeout", "90")
    first = promote(
        *version_1_to(version_1, "Staging", *waiting), url=live_server.url, token=token, popen=True
    )
    rerun = None
    try:
        request = wait_until(lambda: PromotionRequest.objects.first(), timeout=60, message="the request")
        rerun = promote(
            *version_1_to(version_1, "Staging", *waiting), url=live_server.url, token=token, popen=True
        )
        time.sleep(2)
        assert rerun.poll() is None, "the re-run should be waiting on the first run's request"
        services.review_approve(request=request, reviewer=reviewer, comment="holdout looks fine")
        rerun_out, rerun_err = rerun.communicate(timeout=90)
        first_out, first_err = first.communicate(timeout=90)
    finally:
        for process in (first, rerun):
            if process is not None:
                process.kill()
    log = celery_worker.log()[-2000:]
    assert first.returncode == 0, first_err + log
    assert rerun.returncode == 0, rerun_err + log
    assert f"Following the open request #{request.pk} for this version and stage." in rerun_out
    assert rerun_out.strip().endswith("Applied")
    assert registry.client().get_model_version(version_1, "1").current_stage == "Staging"

    # Once applied, the same pipeline run again has nothing to do, and says which request did it.
    done = promote(*version_1_to(version_1, "Staging", *waiting), url=live_server.url, token=token)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"{version_1} v1 already holds Staging (applied by request #{request.pk}). Nothing to do."
    )
    assert PromotionRequest.objects.count() == 1


def test_a_version_moved_in_mlflow_behind_the_workflow_still_exits_2(
    live_server, requester, version_1, registry
):
    move(registry.client(), version_1, 1, "Staging")
    result = promote(*version_1_to(version_1), url=live_server.url, token=token_for(requester))
    assert result.returncode == 2
    assert result.stderr.strip() == f"promote: {version_1} v1 already holds Staging."
    assert not PromotionRequest.objects.exists()


def test_an_unreachable_server_exits_3():
    started = time.monotonic()
    result = promote(*version_1_to("m"), url=f"http://127.0.0.1:{free_port()}", token="prm_x")
    assert result.returncode == 3
    assert "Cannot reach http://127.0.0.1:" in result.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        pytest.param(["--version", "x"], {}, "invalid int value", id="a version that is no number"),
        pytest.param(
            ["--evidence-file", "/nonexistent.json"],
            {},
            "Cannot read the evidence file",
            id="a missing evidence file",
        ),
        pytest.param(["--evidence-file", "{tmp}/bad.json"], {}, "is not JSON", id="bad JSON"),
        pytest.param(["--evidence-file", "{tmp}/list.json"], {}, "must hold a JSON object", id="a JSON list"),
        pytest.param([], {"PROMOTE_TOKEN": ""}, "Set PROMOTE_TOKEN", id="no token"),
        pytest.param([], {"PROMOTE_URL": ""}, "Set PROMOTE_URL", id="no URL"),
        pytest.param([], {"PROMOTE_URL": "ftp://example.com"}, "is not an http(s) URL", id="an ftp URL"),
    ],
)
def test_bad_input_exits_2_before_calling_anyone(args, env, message, tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    base = {"--model-name": "m", "--version": "1", "--stage": "Staging"}
    base.update(dict(zip(args[::2], [a.format(tmp=tmp_path) for a in args[1::2]], strict=True)))
    flags = [item for pair in base.items() for item in pair]
    result = promote(*flags, url=f"http://127.0.0.1:{free_port()}", token="prm_x", timeout=30, **env)
    assert result.returncode == 2
    assert message in result.stderr


def test_it_is_an_executable_script():
    assert (ROOT / "bin" / "promote").stat().st_mode & 0o111
    assert (ROOT / "bin" / "promote").read_text().startswith("#!/usr/bin/env python3\n")
