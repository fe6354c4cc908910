from __future__ import annotations

import json
import logging

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import IntegrityError, transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from registry_sync import selectors, webhooks
from registry_sync.models import SyncRun, WebhookDelivery

logger = logging.getLogger(__name__)
PAGE_SIZE = 50


def _require_role(request: HttpRequest) -> None:
    from promotions.policy import has_any_role
    from promotions.views import NO_ROLE

    if not has_any_role(request.user):
        raise PermissionDenied(NO_ROLE)


@require_GET
def model_list(request: HttpRequest) -> HttpResponse:
    _require_role(request)
    query = request.GET.get("q", "").strip()[:256]
    page = Paginator(selectors.model_list(query=query), PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"page": page, "query": query, "last_sync": selectors.last_successful_sync()}
    template = "registry_sync/model_list.html#rows" if request.htmx else "registry_sync/model_list.html"
    return render(request, template, context)


@require_GET
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    _require_role(request)
    model = selectors.model_by_name(name)
    if model is None:
        raise Http404(f"No model named {name!r} in the mirror.")
    page = Paginator(selectors.model_versions(model), PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "view": selectors.model_page(model),
        "page": page,
        "last_sync": selectors.last_successful_sync(),
        "history": _stage_history(model),
    }
    return render(request, "registry_sync/model_detail.html", context)


def _stage_history(model):
    # The promotions app owns requests; the model page shows which version held each stage.
    from promotions.selectors import stage_history

    return stage_history(model)


def _enqueue_sync(model_name: str) -> None:
    from registry_sync.tasks import sync_registry_task

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
