"""The inbound MLflow webhook: verified, de-duplicated, answered at once, synced by a task."""

from __future__ import annotations

import json
import logging

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from registry_sync import webhooks
from registry_sync.models import SyncRun, WebhookDelivery
from registry_sync.tasks import sync_registry_task

logger = logging.getLogger(__name__)


def _enqueue_sync(model_name: str) -> None:
    try:
        sync_registry_task.delay(model_name, SyncRun.Trigger.WEBHOOK)
    except Exception:  # noqa: BLE001 - the periodic sync catches up when the broker is down
        logger.exception("Could not enqueue the webhook sync of %s", model_name)


@csrf_exempt
@login_not_required
@require_POST
def mlflow_webhook(request: HttpRequest) -> JsonResponse:
    try:
        delivery_id = webhooks.verify(
            secret=settings.MLFLOW_WEBHOOK_SECRET, headers=request.headers, body=request.body
        )
    except webhooks.WebhookRefused as exc:
        return JsonResponse({"error": "unauthorized", "message": str(exc)}, status=401)
    try:
        payload = json.loads(request.body)
        model_name = payload["data"]["name"]
        if not isinstance(model_name, str) or not model_name:
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return JsonResponse(
            {"error": "bad_request", "message": "the body must be JSON with data.name naming a model"},
            status=400,
        )
    try:
        with transaction.atomic():
            WebhookDelivery.objects.create(
                delivery_id=delivery_id[:128],
                received_at=timezone.now(),
                event=f"{payload.get('entity', '')}.{payload.get('action', '')}"[:64],
                model_name=model_name[:256],
            )
            transaction.on_commit(lambda: _enqueue_sync(model_name))
    except IntegrityError:
        return JsonResponse(
            {"error": "unauthorized", "message": "replayed delivery: this delivery id was already accepted"},
            status=401,
        )
    return JsonResponse({"status": "accepted", "model": model_name}, status=202)
