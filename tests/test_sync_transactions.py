"""A slow MLflow never holds the database: sync reads MLflow first, then writes briefly."""

import threading
import time

import pytest
from django.db import connections

from promotions import services
from promotions.models import PromotionRequest
from registry_sync.models import ModelVersion, SyncRun
from registry_sync.services import sync_registry
from tests.factories import mirror_model, stage, version
from tests.registry_helpers import make_version

pytestmark = pytest.mark.django_db(transaction=True)


def in_thread(function) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = function()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            outcome["error"] = exc
        finally:
            outcome["done_at"] = time.monotonic()
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_an_approval_goes_through_while_a_sync_waits_for_mlflow(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    # A new version in MLflow: the sync must read its run (runs/search), which we hold.
    make_version(registry.client(), model_name, metrics={"accuracy": 0.9})
    waiting = services.promotion_request_create(
        version=version(mirror_model(versions={1: {"current_stage": "Staging"}}), 1),
        stage=stage("Production"),
        requested_by=requester,
        justification="go",
    )
    services.review_approve(request=waiting, reviewer=reviewer)

    mlflow_proxy.hold_paths = ("runs/search",)
    sync, synced = in_thread(lambda: sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name))
    assert mlflow_proxy.held.wait(60), "the sync never asked MLflow for the runs"

    held_at = time.monotonic()
    approval, approved = in_thread(lambda: services.review_approve(request=waiting, reviewer=reviewer2))
    # Held far longer than any approval takes; a sync holding the database lock would keep the
    # approval waiting until the hold ends (SQLite's lock waits up to 30 s).
    approval.join(4)
    finished_while_held = not approval.is_alive()
    mlflow_proxy.release.set()
    approval.join(60)
    sync.join(60)

    assert "error" not in approved, approved.get("error")
    assert finished_while_held, "the approval waited for the sync's MLflow call"
    print(f"approval took {approved['done_at'] - held_at:.3f} s while the sync waited for MLflow")
    assert "error" not in synced, synced.get("error")
    waiting.refresh_from_db()
    assert waiting.status == PromotionRequest.Status.APPROVED
    assert ModelVersion.objects.filter(model__name=model_name, metrics__accuracy=0.9).exists()
