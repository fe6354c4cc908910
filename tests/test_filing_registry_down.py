"""Nothing is filed on stale evidence (RELIABILITY 34).

With MLflow unreachable, filing from the page, the API, the CLI and bin/promote is refused with
"MLflow at <host> is not answering": nothing filed from the mirror's old copy, no claim that a
version does not exist when MLflow was never asked. With MLflow answering and the version
really absent, the answer still says it does not exist.
"""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from promotions import tokens
from promotions.api import api
from promotions.models import PromotionRequest
from registry_sync.models import SyncRun
from registry_sync.services import sync_registry
from tests.conftest import free_port
from tests.registry_helpers import make_version
from tests.test_bin_promote import promote

pytestmark = pytest.mark.django_db


@pytest.fixture
def mirrored(registry, model_name):
    """A version MLflow has, already in the mirror from an earlier sync."""
    make_version(registry.client(), model_name, metrics={"accuracy": 0.9})
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    return model_name


@pytest.fixture
def mlflow_down(settings):
    """MLflow stops answering: its URL now leads to a closed port."""
    port = free_port()
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{port}"
    return f"MLflow at http://127.0.0.1:{port} is not answering"


def run(*args):
    out = StringIO()
    call_command("request_promotion", *args, stdout=out)
    return out.getvalue()


def api_client(user) -> Client:
    return Client(headers={"Authorization": f"Bearer {tokens.api_token_create(user=user, name='ci')[1]}"})


def file_through_api(client, model_name, version=1):
    body = {"model_name": model_name, "version": version, "stage": "Staging", "justification": "CI"}
    return client.post("/api/requests", json.dumps(body), content_type="application/json")


def test_the_cli_refuses_with_exit_3_instead_of_filing_from_the_mirror(mirrored, mlflow_down, requester):
    with pytest.raises(CommandError) as error:
        run("--model-name", mirrored, "--version", "1", "--stage", "Staging", "--user", "riley")
    assert error.value.returncode == 3
    assert mlflow_down in str(error.value) and "nothing was filed" in str(error.value)
    assert not PromotionRequest.objects.exists()


def test_the_cli_never_says_a_version_is_missing_when_mlflow_was_not_asked(mirrored, mlflow_down, requester):
    with pytest.raises(CommandError) as error:
        run("--model-name", mirrored, "--version", "2", "--stage", "Staging", "--user", "riley")
    assert error.value.returncode == 3
    assert "does not exist" not in str(error.value)
    assert mlflow_down in str(error.value)


def test_bulk_filing_from_the_cli_exits_3(mirrored, mlflow_down, requester):
    with pytest.raises(CommandError) as error:
        run("--all-passing", "--stage", "Staging", "--user", "riley")
    assert error.value.returncode == 3
    assert mlflow_down in str(error.value)
    assert not PromotionRequest.objects.exists()


def test_the_api_answers_503_registry_unavailable(mirrored, mlflow_down, requester):
    response = file_through_api(api_client(requester), mirrored)
    assert response.status_code == 503
    assert response.json()["code"] == "registry_unavailable"
    assert response.json()["message"].startswith(mlflow_down)
    assert not PromotionRequest.objects.exists()


def test_bulk_filing_through_the_api_answers_503(mirrored, mlflow_down, requester):
    body = {"stage": "Staging", "justification": "nightly", "models": [mirrored]}
    response = api_client(requester).post(
        "/api/requests/bulk", json.dumps(body), content_type="application/json"
    )
    assert response.status_code == 503
    assert response.json()["code"] == "registry_unavailable"
    assert not PromotionRequest.objects.exists()


def test_the_503_is_documented_for_both_filing_operations():
    paths = json.loads(json.dumps(api.get_openapi_schema()))["paths"]
    for path in ("/api/requests", "/api/requests/bulk"):
        assert paths[path]["post"]["responses"]["503"]["content"]


def test_mlflow_failing_with_5xx_is_refused_the_same_way(mirrored, mlflow_proxy, requester):
    mlflow_proxy.mode = "down"
    response = file_through_api(api_client(requester), mirrored)
    assert response.status_code == 503
    assert response.json()["message"].startswith(f"MLflow at {mlflow_proxy.url} is not answering")


def test_the_message_shows_the_host_never_the_credentials(mirrored, settings, requester):
    port = free_port()
    settings.MLFLOW_TRACKING_URI = f"http://ci-user:s3cret-pw@127.0.0.1:{port}/"
    response = file_through_api(api_client(requester), mirrored)
    assert response.status_code == 503
    assert "s3cret" not in response.content.decode() and "ci-user" not in response.content.decode()
    assert f"MLflow at http://127.0.0.1:{port} is not answering" in response.json()["message"]
    last_run = SyncRun.objects.order_by("-pk").first()
    assert "s3cret" not in last_run.error


def test_the_request_form_shows_the_message_and_files_nothing(client, mirrored, mlflow_down, requester):
    client.force_login(requester)
    response = client.post(
        "/requests/new/",
        {"model": mirrored, "version": "1", "stage": "Staging", "justification": "Q3 retrain"},
    )
    assert response.status_code == 503
    body = response.content.decode()
    assert mlflow_down in body
    assert 'id="request-form"' in body  # the form, with what was typed, to send again later
    assert "Q3 retrain" in body
    assert not PromotionRequest.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_bin_promote_exits_3_with_the_message(live_server, mirrored, mlflow_down, requester):
    result = promote(
        "--model-name",
        mirrored,
        "--version",
        "1",
        "--stage",
        "Staging",
        url=live_server.url,
        token=tokens.api_token_create(user=requester, name="ci")[1],
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith(f"promote: HTTP 503: {mlflow_down}")
    assert not PromotionRequest.objects.exists()


def test_with_mlflow_answering_a_missing_version_is_still_missing(mirrored, requester):
    response = file_through_api(api_client(requester), mirrored, version=7)
    assert response.status_code == 422
    assert response.json()["code"] == "unknown_version"
    assert f"Version 7 of model '{mirrored}' does not exist in MLflow" in response.json()["message"]
    with pytest.raises(CommandError) as error:
        run("--model-name", mirrored, "--version", "7", "--stage", "Staging", "--user", "riley")
    assert error.value.returncode == 2
    assert "does not exist in MLflow" in str(error.value)
