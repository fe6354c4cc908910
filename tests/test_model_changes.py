"""The request page's "What changes in the model": real sklearn models logged to the test MLflow
server, read from their MLmodel files through the gateway and kept per version."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import mlflow
import mlflow.sklearn
import pandas as pd
import pytest
from mlflow.models import infer_signature
from sklearn.linear_model import LinearRegression

from bench.common import ROOT
from promotions import selectors, services
from promotions.model_changes import ColumnChange, column_changes, pinned_requirements
from registry_sync import gateway
from registry_sync.models import VersionModelFiles
from tests.factories import mirror_model, stage, version
from tests.registry_helpers import experiment_id
from tests.registry_helpers import stage as move

pytestmark = [
    pytest.mark.django_db,
    # The integer columns are on purpose: a long input that becomes a double is the type change.
    pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer:UserWarning"),
]

HOSTILE = "<img src=x onerror=alert(1)>"


def log_model(
    url: str, name: str, frame: pd.DataFrame, target: pd.Series, *, requirements, signed=True
) -> str:
    """Fit and log a model to MLflow, registered as the next version of `name`; its run id."""
    mlflow.set_tracking_uri(url)
    model = LinearRegression().fit(frame, target)
    with mlflow.start_run(
        experiment_id=experiment_id(mlflow.MlflowClient(url)), run_name=f"fit-{len(frame.columns)}"
    ) as run:
        mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(frame, target) if signed else None,
            registered_model_name=name,
            # Stated, so MLflow infers nothing (which would load the model in a subprocess).
            pip_requirements=requirements,
        )
    return run.info.run_id


@pytest.fixture(scope="module")
def two_models(mlflow_server):
    """v1 holds Staging: inputs a (double), b (long), c (double); output target (long).
    v2, the candidate: c removed, b now double, d added (required), a column named with HTML,
    output target now double, pandas upgraded and lightgbm added."""
    name = f"churn_{uuid.uuid4().hex[:8]}"
    first = pd.DataFrame({"a": [0.1, 0.2, 0.3], "b": [1, 2, 3], "c": [1.5, 2.5, 3.5]})
    log_model(
        mlflow_server.url,
        name,
        first,
        pd.Series([0, 1, 1], name="target"),
        requirements=["scikit-learn==1.9.1", "pandas==2.2.0"],
    )
    second = pd.DataFrame(
        {"a": [0.1, 0.2, 0.3], "b": [1.0, 2.0, 3.5], "d": [4.0, 5.0, 6.0], HOSTILE: [1.0, 0.0, 1.0]}
    )
    run_id = log_model(
        mlflow_server.url,
        name,
        second,
        pd.Series([0.5, 1.5, 1.0], name="target"),
        requirements=["scikit-learn==1.9.1", "pandas==2.3.1", "lightgbm==4.6.0"],
    )
    client = mlflow_server.client()
    move(client, name, 1, "Staging")
    client.update_model_version(name, "2", description=f"Drops c; {HOSTILE} added")
    return {"name": name, "run_id": run_id}


@pytest.fixture
def candidate(registry, two_models, requester):
    """A request to put v2 into Staging, which v1 holds."""
    return services.promotion_request_file(
        model_name=two_models["name"],
        version=2,
        stage_name="Staging",
        requested_by=requester,
        justification="new features",
    )


def _by_name(changes: list[ColumnChange]) -> dict[str, ColumnChange]:
    return {change.name: change for change in changes}


def test_the_gateway_reads_the_mlmodel_file_and_the_requirements(registry, two_models):
    run_id = two_models["run_id"]
    files = gateway.get_model_files(two_models["name"], 2, run_id=run_id)
    assert [spec["name"] for spec in files.inputs] == ["a", "b", "d", HOSTILE]
    assert {spec["name"]: spec["type"] for spec in files.outputs} == {"target": "double"}
    assert files.flavors["sklearn"] == "1.9.1" and "python_function" in files.flavors
    assert files.python_version.count(".") == 2
    assert files.mlflow_version == mlflow.__version__
    assert "lightgbm==4.6.0" in files.requirements
    assert files.run_name == "fit-4"
    assert files.experiment_id == mlflow.MlflowClient(registry.url).get_run(run_id).info.experiment_id


def test_the_comparison_flags_each_breaking_change(candidate):
    comparison = selectors.model_comparison(candidate)
    changes = comparison.changes
    assert comparison.error == "" and comparison.holder_number == 1
    inputs = _by_name(changes.inputs)
    assert set(inputs) == {"b", "c", "d", HOSTILE}
    assert (inputs["c"].change, inputs["c"].breaking) == ("removed", True)
    assert (inputs["b"].change, inputs["b"].before, inputs["b"].after) == ("type changed", "long", "double")
    assert inputs["b"].breaking
    assert (inputs["d"].change, inputs["d"].breaking) == ("added, required", True)
    outputs = _by_name(changes.outputs)
    assert (outputs["target"].change, outputs["target"].breaking) == ("type changed", True)
    assert len(changes.breaking) == 5
    requirements = {r.name: (r.before, r.after) for r in changes.requirements}
    assert requirements == {"pandas": ("==2.2.0", "==2.3.1"), "lightgbm": ("", "==4.6.0")}
    assert changes.flavors == [] and changes.python is None
    assert comparison.run_name == "fit-4"


def test_the_request_page_shows_what_changes_with_breaking_changes_named(
    client, reviewer, candidate, settings
):
    settings.MLFLOW_UI_URL = "https://mlflow.example.com/"
    client.force_login(reviewer)
    body = client.get(f"/requests/{candidate.pk}/").content.decode()
    assert "What changes in the model (v2 against v1)" in body
    assert "<td><code>c</code></td><td>removed</td><td>double</td><td>—</td>" in body
    assert "<td><code>b</code></td><td>type changed</td><td>long</td><td>double</td>" in body
    assert "<td><code>d</code></td><td>added, required</td><td>—</td><td>double</td>" in body
    assert body.count('<strong class="status status--failed">BREAKING</strong>') == 6  # 5 rows + summary
    assert "5 changes may break callers of the current version." in body
    assert "pandas ==2.2.0 → ==2.3.1" in body and "lightgbm added (==4.6.0)" in body
    name = candidate.version.model.name
    assert f'href="https://mlflow.example.com/#/models/{name}/versions/2"' in body
    run = mlflow.MlflowClient(settings.MLFLOW_TRACKING_URI).get_run(candidate.version.run_id)
    assert (
        f'href="https://mlflow.example.com/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"'
        in body
    )
    assert "run <strong>fit-4</strong>" in body


def test_hostile_names_are_escaped(client, reviewer, candidate):
    client.force_login(reviewer)
    body = client.get(f"/requests/{candidate.pk}/").content.decode()
    assert HOSTILE not in body
    assert "<code>&lt;img src=x onerror=alert(1)&gt;</code>" in body  # the column
    assert "Drops c; &lt;img src=x onerror=alert(1)&gt; added" in body  # the description


def test_a_second_page_view_makes_no_mlflow_call(
    client, reviewer, mlflow_proxy, two_models, requester, candidate
):
    promotion = candidate
    client.force_login(reviewer)
    mlflow_proxy.calls.clear()
    assert "type changed" in client.get(f"/requests/{promotion.pk}/").content.decode()
    assert mlflow_proxy.calls, "the first view reads both versions' files"
    downloaded = sorted(path.rpartition("/")[2] for _, path in mlflow_proxy.calls if "/artifacts/" in path)
    # Two small files of each version, never the model itself (model.pkl) nor python_env.yaml,
    # whose Python version MLmodel already states.
    assert downloaded == ["MLmodel", "MLmodel", "requirements.txt", "requirements.txt"]
    assert VersionModelFiles.objects.count() == 2
    mlflow_proxy.calls.clear()
    assert "type changed" in client.get(f"/requests/{promotion.pk}/").content.decode()
    assert mlflow_proxy.calls == []


def test_the_poll_renders_no_model_files_and_calls_no_mlflow(
    client, reviewer, mlflow_proxy, two_models, requester, candidate
):
    promotion = candidate
    client.force_login(reviewer)
    mlflow_proxy.calls.clear()
    response = client.get(f"/requests/{promotion.pk}/status/", {"seen": "older"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and 'id="request-panel"' in response.content.decode()
    assert "What changes in the model" not in response.content.decode()
    assert mlflow_proxy.calls == [] and not VersionModelFiles.objects.exists()


def test_mlflow_down_leaves_the_page_up_with_the_reason_and_caches_nothing(
    client, reviewer, mlflow_proxy, two_models, requester, candidate
):
    promotion = candidate
    client.force_login(reviewer)
    mlflow_proxy.mode = "down"
    response = client.get(f"/requests/{promotion.pk}/")
    body = response.content.decode()
    assert response.status_code == 200
    assert "The model&#x27;s files could not be read: MLflow at http://127.0.0.1:" in body
    assert "answered with an error (HTTP 503)" in body  # what the proxy's "down" answers
    assert not VersionModelFiles.objects.exists()
    mlflow_proxy.mode = "pass"  # the failure was not kept: the next view reads the files
    assert "type changed" in client.get(f"/requests/{promotion.pk}/").content.decode()


def test_a_slow_mlflow_holds_the_page_for_the_page_timeout_only(
    client, reviewer, mlflow_proxy, two_models, requester, settings, candidate
):
    promotion = candidate
    client.force_login(reviewer)
    settings.MLFLOW_PAGE_TIMEOUT_SECONDS = 1  # the other calls keep MLFLOW_TIMEOUT_SECONDS (10)
    mlflow_proxy.hold_paths = ("/model-versions/get-download-uri",)
    started = time.monotonic()
    response = client.get(f"/requests/{promotion.pk}/")
    elapsed = time.monotonic() - started
    mlflow_proxy.release.set()
    assert response.status_code == 200
    assert "The model&#x27;s files could not be read: MLflow at" in response.content.decode()
    assert elapsed < 5
    assert mlflow_proxy.calls.count(("GET", "/api/2.0/mlflow/model-versions/get-download-uri")) == 1


def test_a_version_without_a_signature_says_so(client, registry, reviewer, requester, model_name):
    frame = pd.DataFrame({"a": [0.1, 0.2, 0.3]})
    log_model(
        registry.url,
        model_name,
        frame,
        pd.Series([1.0, 2.0, 3.0]),
        requirements=["pandas==2.2.0"],
        signed=False,
    )
    promotion = services.promotion_request_file(
        model_name=model_name, version=1, stage_name="Staging", requested_by=requester, justification="first"
    )
    client.force_login(reviewer)
    body = client.get(f"/requests/{promotion.pk}/").content.decode()
    assert "v1 was logged without a signature." in body
    assert "BREAKING" not in body


def test_a_compatible_version_says_so_and_one_without_a_signature_is_not_called_compatible(
    client, registry, reviewer, requester, model_name
):
    frame = pd.DataFrame({"a": [0.1, 0.2, 0.3], "b": [1.5, 2.5, 3.5]})
    target = pd.Series([1.0, 2.0, 3.0], name="y")
    log_model(registry.url, model_name, frame, target, requirements=["pandas==2.2.0"])
    log_model(registry.url, model_name, frame, target, requirements=["pandas==2.3.1"])
    log_model(registry.url, model_name, frame, target, requirements=["pandas==2.2.0"], signed=False)
    move(registry.client(), model_name, 1, "Staging")
    client.force_login(reviewer)
    pages = {}
    for number in (2, 3):
        promotion = services.promotion_request_file(
            model_name=model_name,
            version=number,
            stage_name="Staging",
            requested_by=requester,
            justification="x",
        )
        pages[number] = client.get(f"/requests/{promotion.pk}/").content.decode()
    assert "✓ No breaking change in the signature." in pages[2]
    assert "The signature (inputs and outputs) is the same as v1's." in pages[2]
    assert "pandas ==2.2.0 → ==2.3.1" in pages[2] and "BREAKING" not in pages[2]
    assert "v3 was logged without a signature: its inputs cannot be compared with v1&#x27;s." in pages[3]
    assert "No breaking change" not in pages[3] and "BREAKING" not in pages[3]
    assert "Requirements: the same as v1's." in pages[3]


def test_with_no_holder_the_candidate_signature_is_shown_alone(
    client, registry, reviewer, requester, model_name
):
    frame = pd.DataFrame({"age": [31, 42, 53], "income": [1.5, 2.5, 3.5]})
    log_model(
        registry.url,
        model_name,
        frame,
        pd.Series([0.0, 1.0, 1.0], name="churn"),
        requirements=["pandas==2.2.0"],
    )
    promotion = services.promotion_request_file(
        model_name=model_name, version=1, stage_name="Staging", requested_by=requester, justification="first"
    )
    client.force_login(reviewer)
    body = client.get(f"/requests/{promotion.pk}/").content.decode()
    assert "<th>signature of v1</th>" in body
    assert "<td>input</td><td><code>age</code></td><td>long</td><td>yes</td>" in body
    assert "<td>output</td><td><code>churn</code></td><td>double</td><td>yes</td>" in body
    assert "BREAKING" not in body and "No breaking change" not in body


def test_an_input_that_becomes_required_is_breaking_and_one_that_becomes_optional_is_not():
    old = [{"name": "x", "type": "double", "required": False}, {"name": "y", "type": "long"}]
    new = [
        {"name": "x", "type": "double", "required": True},
        {"name": "y", "type": "long", "required": False},
    ]
    changes = _by_name(column_changes(old, new, inputs=True))
    assert (changes["x"].change, changes["x"].breaking) == ("now required", True)
    assert (changes["y"].change, changes["y"].breaking) == ("now optional", False)
    added_optional = column_changes(
        old, [*old, {"name": "z", "type": "string", "required": False}], inputs=True
    )
    assert [(c.name, c.change, c.breaking) for c in added_optional] == [("z", "added", False)]


def test_an_added_output_is_not_breaking():
    changes = column_changes(
        [{"name": "p", "type": "double"}],
        [{"name": "p", "type": "double"}, {"name": "q", "type": "double"}],
        inputs=False,
    )
    assert [(c.name, c.change, c.breaking) for c in changes] == [("q", "added", False)]


def test_requirements_are_read_by_package_name():
    lines = ["# comment", "-r other.txt", "Scikit_Learn==1.9.1", "pandas>=2.0  # floor", "", "numpy"]
    assert pinned_requirements(lines) == {
        "scikit-learn": "==1.9.1",
        "pandas": ">=2.0",
        "numpy": "(any version)",
    }


def test_the_ui_links_default_to_the_tracking_uri_without_credentials(settings):
    settings.MLFLOW_UI_URL = ""
    settings.MLFLOW_TRACKING_URI = "https://bot:s3cret@mlflow.internal:8443/ml/"
    assert gateway.ui_version_url("sales forecast/eu", 3) == (
        "https://mlflow.internal:8443/ml/#/models/sales%20forecast%2Feu/versions/3"
    )
    assert gateway.ui_run_url("7", "abc") == "https://mlflow.internal:8443/ml/#/experiments/7/runs/abc"


def test_a_ui_url_that_is_not_http_stops_start_up():
    # It becomes the href of the page's links: a javascript: URL would run in a reviewer's browser.
    env = {**os.environ, "DEBUG": "true", "MLFLOW_UI_URL": "javascript:alert(1)"}
    started = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert started.returncode != 0
    assert "MLFLOW_UI_URL='javascript:alert(1)' has an unsupported scheme" in started.stdout + started.stderr


def test_a_mirror_row_without_artifacts_costs_no_mlflow_call(mlflow_proxy, requester):
    sales = mirror_model("sales_forecast", {5: {"current_stage": "Staging"}})
    promotion = services.promotion_request_create(
        version=version(sales, 5), stage=stage("Production"), requested_by=requester, justification="Q3"
    )
    mlflow_proxy.calls.clear()
    comparison = selectors.model_comparison(promotion)
    assert "names no artifacts" in comparison.error and mlflow_proxy.calls == []
