"""The inbound MLflow webhook: verified, de-duplicated, answered at once, synced by a task.

Each accepted event asks for a refresh of the one model it names (registry_sync.refresh, which
collapses a storm of events into a few refreshes). A model the mirror does not know is refreshed
all the same: the mirror may be behind (a model registered before the webhook was, or an event
MLflow failed to deliver), and a refresh of a name MLflow does not have finds nothing and writes
nothing. What cannot be trusted is refused before anything is written: unsigned, badly signed,
stale or replayed deliveries (401), bodies that name no model (400).
"""

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

from registry_sync import refresh, webhooks
from registry_sync.models import RegisteredModel, WebhookDelivery
from registry_sync.tasks import enqueue_refresh

logger = logging.getLogger(__name__)
MODEL_NAME_MAX = RegisteredModel._meta.get_field("name").max_length


def _model_name(payload) -> str:
    """The model an event names: `data.name` (MLflow's payloads), or `name` at the top of the
    older form's bare payload."""
    if not isinstance(payload, dict):
        raise TypeError
    data = payload["data"] if "data" in payload else payload
    name = data["name"]
    if not isinstance(name, str) or not name.strip() or len(name) > MODEL_NAME_MAX:
        raise TypeError
    return name


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
        model_name = _model_name(payload)
    except (ValueError, KeyError, TypeError):
        return JsonResponse(
            {
                "error": "bad_request",
                "message": "the body must be JSON with data.name naming a model "
                f"(at most {MODEL_NAME_MAX} characters)",
            },
            status=400,
        )
    try:
        with transaction.atomic():
            WebhookDelivery.objects.create(
                delivery_id=delivery_id[:128],
                received_at=timezone.now(),
                event=f"{payload.get('entity', '')}.{payload.get('action', '')}"[:64],
                model_name=model_name,
            )
            if refresh.refresh_wanted(model_name):
                transaction.on_commit(lambda: enqueue_refresh(model_name))
    except IntegrityError:
        return JsonResponse(
            {"error": "unauthorized", "message": "replayed delivery: this delivery id was already accepted"},
            status=401,
        )
    return JsonResponse({"status": "accepted", "model": model_name}, status=202)
