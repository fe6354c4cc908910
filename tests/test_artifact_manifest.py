"""Approvals bound to the model's bytes: the manifest of a version's files, recorded after filing,
required for approval, and checked again before the apply writes anything to MLflow."""

from __future__ import annotations

import hashlib
import io
import re
import time
import uuid
from pathlib import Path

import mlflow
import mlflow.sklearn
import pandas as pd
import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from sklearn.linear_model import LinearRegression

from promotions import selectors, services, tokens
from promotions.errors import ManifestFailed, ManifestPending
from promotions.models import AuditEvent, ManifestState, PromotionRequest, Review
from promotions.services import manifest as manifest_service
from registry_sync import gateway
from registry_sync.models import SyncRun
from registry_sync.services import sync_registry
from tests.conftest import broker_unreachable
from tests.factories import stage as catalog_stage
from tests.registry_helpers import experiment_id, make_run, make_version

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status
TRANSITION = "/model-versions/transition-stage"


def log_model(url: str, name: str) -> None:
    """Fit and log a small sklearn model, registered as the next version of `name`."""
    mlflow.set_tracking_uri(url)
    frame = pd.DataFrame({"a": [0.1, 0.2, 0.3], "b": [1.5, 2.5, 3.5]})
    with mlflow.start_run(experiment_id=experiment_id(mlflow.MlflowClient(url))):
        mlflow.sklearn.log_model(
            LinearRegression().fit(frame, pd.Series([0.0, 1.0, 1.0])),
            name="model",
            registered_model_name=name,
            pip_requirements=["scikit-learn==1.9.1"],
        )


def files_on_disk(server, name: str, number: int = 1) -> Path:
    """Where the test MLflow server keeps the version's files (its --artifacts-destination)."""
    uri = server.client().get_model_version_download_uri(name, str(number))
    assert uri.startswith("mlflow-artifacts:/"), uri
    return server.workdir / "artifacts" / uri.removeprefix("mlflow-artifacts:/")


def hashlib_walk(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        path.relative_to(folder).as_posix(): (
            path.stat().st_size,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in folder.rglob("*")
        if path.is_file()
    }


@pytest.fixture
def binding(settings):
    settings.PROMOTION_MANIFEST_CHECK = "full"
    return settings


@pytest.fixture
def logged(registry, model_name):
    log_model(registry.url, model_name)
    return model_name


def file_request(name: str, requester, *, target: str = "Staging") -> PromotionRequest:
    return services.promotion_request_file(
        model_name=name, version=1, stage_name=target, requested_by=requester, justification="retrained"
    )


def recorded_request(name: str, requester) -> PromotionRequest:
    request = file_request(name, requester)
    assert services.request_manifest_compute(request_id=request.pk) == "recorded"
    request.refresh_from_db()
    return request


def approved(name: str, requester, reviewer) -> PromotionRequest:
    request = services.review_approve(request=recorded_request(name, requester), reviewer=reviewer)
    assert request.status == Status.APPROVED
    return request


def page(user, request: PromotionRequest) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(reverse("request_detail", args=[request.pk]))
    assert response.status_code == 200
    return response.content.decode()


# --- the manifest -----------------------------------------------------------------------------


def test_the_manifest_is_every_file_under_the_versions_artifacts(registry, logged):
    manifest = gateway.artifact_manifest(logged, 1)

    on_disk = hashlib_walk(files_on_disk(registry, logged))
    assert {f.path: (f.size, f.sha256) for f in manifest.files} == on_disk
    assert {"MLmodel", "model.skops", "requirements.txt"} <= set(on_disk)
    assert manifest.total_bytes == sum(size for size, _ in on_disk.values())
    lines = sorted(f"{path}\0{size}\0{sha}\n" for path, (size, sha) in on_disk.items())
    assert manifest.digest == hashlib.sha256("".join(lines).encode()).hexdigest()


def test_a_quick_manifest_hashes_only_mlmodel_and_small_files(registry, logged):
    manifest = gateway.artifact_manifest(logged, 1, mode="quick", small_file_bytes=200)

    hashed = {f.path for f in manifest.files if f.sha256}
    sizes = {f.path: f.size for f in manifest.files}
    assert "MLmodel" in hashed and "model.skops" not in hashed  # MLmodel is larger than 200 bytes
    assert sizes == {path: size for path, (size, _) in hashlib_walk(files_on_disk(registry, logged)).items()}


def test_a_runs_version_is_streamed_from_the_served_store_in_one_call_a_file(
    mlflow_proxy, registry, model_name
):
    client = registry.client()
    run_id = make_run(client)
    client.log_text(run_id, "flavors: {}\n", "model/MLmodel")
    client.log_text(run_id, "weights " * 100, "model/sub/model.pkl")
    client.create_registered_model(model_name)
    client.create_model_version(model_name, f"runs:/{run_id}/model", run_id=run_id)
    before = len(mlflow_proxy.calls)

    manifest = gateway.artifact_manifest(model_name, 1)

    assert [f.path for f in manifest.files] == ["MLmodel", "sub/model.pkl"]
    calls = [path.split("/api/2.0/", 1)[-1] for _, path in mlflow_proxy.calls[before:]]
    prefix = f"mlflow-artifacts/artifacts/{experiment_id(client)}/{run_id}/artifacts/model"
    # the location, the run it names, one listing a folder, one download a file: no scratch copy
    # through MLflow's generic download (which asks the server's capabilities and the logged models)
    assert calls == [
        "mlflow/model-versions/get-download-uri",
        "mlflow/runs/get",
        "mlflow-artifacts/artifacts",
        "mlflow-artifacts/artifacts",
        f"{prefix}/MLmodel",
        f"{prefix}/sub/model.pkl",
    ]


# --- filing and approval ----------------------------------------------------------------------


def test_approval_is_refused_until_the_files_are_recorded(binding, logged, requester, reviewer):
    request = file_request(logged, requester)
    assert request.manifest_state == ManifestState.COMPUTING

    with pytest.raises(ManifestPending, match="still being computed"):
        services.review_approve(request=request, reviewer=reviewer)
    html = page(reviewer, request)
    assert "Computing the model files" in html
    assert 'value="approve" class="primary" disabled' in html
    _, raw = tokens.api_token_create(user=reviewer, name="ci")
    api = Client(headers={"Authorization": f"Bearer {raw}"})
    response = api.post(f"/api/requests/{request.pk}/approve", data="{}", content_type="application/json")
    assert (response.status_code, response.json()["code"]) == (409, "manifest_pending")
    assert api.get(f"/api/requests/{request.pk}").json()["artifacts"]["state"] == "computing"
    assert not Review.objects.filter(request=request).exists()

    assert services.request_manifest_compute(request_id=request.pk) == "recorded"
    request.refresh_from_db()
    digest = request.manifest["sha256"]
    assert request.evidence["artifacts"] == {"sha256": digest, "files": 5, "bytes": request.manifest["bytes"]}
    assert request.evidence_sha256 == services.evidence.evidence_digest(request.evidence)
    html = page(reviewer, request)
    assert f"Model files: 5 files, {request.manifest['bytes'] / 1024:.1f} KB, sha256 {digest[:12]}…" in html
    assert "model.skops" in html and 'value="approve" class="primary" disabled' not in html
    out = api.get(f"/api/requests/{request.pk}").json()["artifacts"]
    assert out == {
        "state": "recorded",
        "sha256": digest,
        "files": 5,
        "bytes": request.manifest["bytes"],
        "error": "",
    }
    approved_request = services.review_approve(request=request, reviewer=reviewer)
    assert approved_request.status == Status.APPROVED
    assert Review.objects.get(request=request).evidence_sha256 == request.evidence_sha256
    assert AuditEvent.objects.filter(action="request.manifest_recorded", request_id=request.pk).count() == 1


def test_waiting_for_you_keeps_a_request_apart_until_its_files_are_recorded(
    binding, logged, requester, reviewer
):
    request = file_request(logged, requester)
    client = Client()
    client.force_login(reviewer)

    body = client.get("/").content.decode()
    blocked = body.split("Not approvable yet (1)", 1)[1]
    assert f"#{request.pk} " in blocked and "still being computed" in blocked
    assert selectors.waiting_for(reviewer).count() == 0

    services.request_manifest_compute(request_id=request.pk)
    assert "Not approvable yet" not in client.get("/").content.decode()
    assert list(selectors.waiting_for(reviewer)) == [request]


def test_an_automatic_stage_waits_for_the_files_before_it_is_approved(binding, logged, requester):
    staging = catalog_stage("Staging")
    staging.required_approvals = 0
    staging.save()

    request = file_request(logged, requester)
    assert request.status == Status.PENDING

    services.request_manifest_compute(request_id=request.pk)
    request.refresh_from_db()
    assert request.status == Status.APPROVED


def test_a_version_with_no_files_can_never_be_approved(binding, registry, model_name, requester, reviewer):
    make_version(registry.client(), model_name)  # a run with no artifacts logged

    request = file_request(model_name, requester)
    assert services.request_manifest_compute(request_id=request.pk) == "failed"

    request.refresh_from_db()
    assert request.manifest_state == ManifestState.FAILED
    assert "has no files in its artifacts" in request.manifest_error
    with pytest.raises(ManifestFailed, match="has no files"):
        services.review_approve(request=request, reviewer=reviewer)
    html = page(reviewer, request)
    assert "The model files could not be recorded" in html and "has no files" in html
    assert 'value="approve" class="primary" disabled' in html
    assert AuditEvent.objects.filter(action="request.manifest_failed", request_id=request.pk).count() == 1


def test_deleted_artifacts_fail_the_manifest(binding, registry, logged, requester):
    folder = files_on_disk(registry, logged)
    for path in folder.rglob("*"):
        if path.is_file():
            path.unlink()

    request = file_request(logged, requester)
    assert services.request_manifest_compute(request_id=request.pk) == "failed"
    request.refresh_from_db()
    assert "has no files" in request.manifest_error


def test_an_unreadable_artifact_store_fails_the_manifest(binding, registry, model_name, requester):
    client = registry.client()
    client.create_registered_model(model_name)
    client.create_model_version(model_name, "gs://no-such-bucket/model")  # no GCS client installed

    request = file_request(model_name, requester)
    assert services.request_manifest_compute(request_id=request.pk) == "failed"
    request.refresh_from_db()
    assert request.manifest_error == (
        f"The artifacts of version 1 of '{model_name}' are not readable in the artifact store."
    )
    assert "google" in request.manifest_error_detail


def test_mlflow_down_leaves_the_manifest_computing_with_the_reason(
    binding, mlflow_proxy, logged, requester, reviewer
):
    request = file_request(logged, requester)
    mlflow_proxy.mode = "down"

    with pytest.raises(manifest_service.ManifestDeferred):
        services.request_manifest_compute(request_id=request.pk)

    request.refresh_from_db()
    assert request.manifest_state == ManifestState.COMPUTING
    assert "answered with an error (HTTP 503)" in request.manifest_error
    assert "trying again: MLflow at" in page(reviewer, request)
    mlflow_proxy.mode = "pass"
    assert services.request_manifest_compute(request_id=request.pk) == "recorded"


def test_a_lost_manifest_task_is_published_again_by_the_sweeper(
    binding, logged, requester, django_capture_on_commit_callbacks
):
    with broker_unreachable(), django_capture_on_commit_callbacks(execute=True):
        request = file_request(logged, requester)
    request.refresh_from_db()
    assert request.manifest_enqueued_at is None

    assert services.manifests_sweep() == [request.pk]
    request.refresh_from_db()
    assert request.manifest_enqueued_at is not None
    assert services.manifests_sweep() == []  # published just now: not stuck


def test_the_files_stay_in_the_evidence_when_a_sync_refreshes_it(binding, registry, logged, requester):
    request = recorded_request(logged, requester)
    registry.client().set_model_version_tag(logged, "1", "owner", "team-a")

    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=logged)

    request.refresh_from_db()
    assert request.evidence["tags"]["owner"] == "team-a"
    assert request.evidence["artifacts"]["sha256"] == request.manifest["sha256"]


# --- apply ------------------------------------------------------------------------------------


def test_files_rewritten_after_approval_fail_the_apply_and_write_nothing(
    binding, mlflow_proxy, registry, logged, requester, reviewer
):
    request = approved(logged, requester, reviewer)
    model_file = files_on_disk(registry, logged) / "model.skops"
    before = hashlib.sha256(model_file.read_bytes()).hexdigest()
    model_file.write_bytes(b"not the approved model")
    after = hashlib.sha256(b"not the approved model").hexdigest()
    calls = len(mlflow_proxy.calls)

    assert services.promotion_apply(request_id=request.pk) == "failed"

    request.refresh_from_db()
    assert request.status == Status.FAILED
    assert request.last_error == (
        f"The model files changed after approval: model.skops (sha256 {before[:12]}… → {after[:12]}…)"
    )
    assert all(method == "GET" for method, _ in mlflow_proxy.calls[calls:])
    assert registry.client().get_model_version(logged, "1").current_stage == "None"
    event = AuditEvent.objects.get(action="promotion.failed", request_id=request.pk)
    assert "model.skops" in event.meaning


def test_quick_mode_sees_a_large_file_grow(binding, registry, logged, requester, reviewer):
    binding.PROMOTION_MANIFEST_CHECK, binding.PROMOTION_MANIFEST_QUICK_MAX_BYTES = "quick", 100
    request = approved(logged, requester, reviewer)
    model_file = files_on_disk(registry, logged) / "model.skops"
    size = model_file.stat().st_size
    with model_file.open("ab") as handle:
        handle.write(b"\0" * 10)

    assert services.promotion_apply(request_id=request.pk) == "failed"
    request.refresh_from_db()
    assert request.last_error == (
        f"The model files changed after approval: model.skops (size {size:,} → {size + 10:,} bytes)"
    )


def test_quick_mode_hashes_mlmodel_whatever_its_size(binding, registry, logged, requester, reviewer):
    binding.PROMOTION_MANIFEST_CHECK, binding.PROMOTION_MANIFEST_QUICK_MAX_BYTES = "quick", 10
    request = approved(logged, requester, reviewer)
    mlmodel = files_on_disk(registry, logged) / "MLmodel"
    text = mlmodel.read_text()
    mlmodel.write_text(text.replace("python_function", "python_functioX", 1))  # same size

    assert services.promotion_apply(request_id=request.pk) == "failed"
    request.refresh_from_db()
    assert request.last_error.startswith("The model files changed after approval: MLmodel (sha256 ")


def test_the_applied_version_carries_the_files_digest(
    binding, mlflow_proxy, registry, logged, requester, reviewer
):
    request = approved(logged, requester, reviewer)
    before = len(mlflow_proxy.calls)

    assert services.promotion_apply(request_id=request.pk) == "applied"

    tags = registry.client().get_model_version(logged, "1").tags
    assert tags["promotion.artifact_sha256"] == request.manifest["sha256"]
    writes = [(m, p.split("/mlflow/", 1)[-1]) for m, p in mlflow_proxy.calls[before:] if m != "GET"]
    # the transition, then five tags: the stage record, approved_by, applied_at, the files' digest,
    # the request id
    assert writes == [("POST", "model-versions/transition-stage")] + [("POST", "model-versions/set-tag")] * 5


# --- with the worker --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_worker_records_the_files_then_applies_an_automatic_stage(
    binding, registry, worker_factory, requester
):
    name = f"model_{uuid.uuid4().hex[:10]}"
    log_model(registry.url, name)
    staging = catalog_stage("Staging")
    staging.required_approvals = 0
    staging.save()
    worker_factory(PROMOTION_MANIFEST_CHECK="full")

    request = file_request(name, requester)
    deadline = time.monotonic() + 60
    while request.status != Status.APPLIED and time.monotonic() < deadline:
        time.sleep(0.5)
        request.refresh_from_db()

    assert request.status == Status.APPLIED, request.last_error or request.manifest_error
    assert request.manifest_state == ManifestState.READY
    tags = registry.client().get_model_version(name, "1").tags
    assert tags["promotion.artifact_sha256"] == request.manifest["sha256"]
    assert manifest_service.MANIFEST_TASK == "promotions.compute_manifest"


def test_a_signature_given_after_the_files_were_recorded_verifies(binding, logged, requester, reviewer):
    """A signer signs the evidence digest that includes the files' digest: the log's check of
    signatures follows the digest the manifest moved, and finds nothing wrong."""
    staging = catalog_stage("Staging")
    staging.signature_required = True
    staging.save()
    request = recorded_request(logged, requester)
    client = Client()
    client.force_login(reviewer)
    html = client.get(reverse("request_detail", args=[request.pk])).content.decode()
    token = re.search(r'name="signature_token" value="([^"]*)"', html).group(1)
    response = client.post(
        reverse("request_decide", args=[request.pk]),
        {
            "decision": "approve",
            "comment": "files and metrics reviewed",
            "evidence_sha256": request.evidence_sha256,
            "signature_token": token,
            "meaning": "Approved for release",
            "password": f"pw-{reviewer.username}",
        },
    )
    assert response.status_code in (200, 302), response.content.decode()[:500]
    review = Review.objects.get(request=request)
    assert review.signed_digest == request.evidence_sha256 != request.evidence["artifacts"]["sha256"]
    # verify_audit_log raises CommandError naming each signature that does not match.
    call_command("verify_audit_log", stdout=io.StringIO(), stderr=io.StringIO())
