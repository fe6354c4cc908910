"""Approved requests against the real MLflow server, ready to be applied."""

from __future__ import annotations

from promotions import services
from promotions.models import PromotionRequest
from registry_sync.models import SyncRun
from registry_sync.services import sync_registry
from tests.factories import stage as catalog_stage
from tests.registry_helpers import make_version, stage


def registry_with_production(client, name: str) -> None:
    """v1 in Production, v2 in Staging."""
    make_version(client, name, metrics={"accuracy": 0.90}, params={"depth": 8})
    make_version(client, name, metrics={"accuracy": 0.93}, params={"depth": 10})
    stage(client, name, 1, "Production")
    stage(client, name, 2, "Staging")


def approved_request(name: str, requester, reviewers, *, number: int = 2, target: str = "Production"):
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=name)
    request = services.promotion_request_create(
        version=services.version_get(model_name=name, version=number, refresh=False),
        stage=catalog_stage(target),
        requested_by=requester,
        justification="tests pass",
    )
    for reviewer in reviewers:
        request = services.review_approve(request=request, reviewer=reviewer)
    assert request.status == PromotionRequest.Status.APPROVED
    return request
