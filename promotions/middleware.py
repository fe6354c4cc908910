"""Middleware of the product's own."""

from __future__ import annotations

import logging
import time

from django.contrib.auth.middleware import LoginRequiredMiddleware as DjangoLoginRequiredMiddleware
from django.http import HttpRequest, HttpResponse
from django.utils.log import log_response

from common import log_context

access_log = logging.getLogger("promotions.access")


class LoginRequiredMiddleware(DjangoLoginRequiredMiddleware):
    """Django's, asking the view before the user: Django's loads the session and the user for
    every request, also for a view marked `login_not_required` (the sign-in page, the health
    check, the live poll's cheap path, which answers "unchanged" from one read of its row)."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if not getattr(view_func, "login_required", True):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)


def request_id_middleware(get_response):
    """Give every web request an id: the X-Request-ID a proxy sent when it is a sane token,
    else a new one. Every log line of the request carries it, so do the tasks it publishes
    (promotions/task_context.py), and the response echoes it for the client to quote."""

    def middleware(request: HttpRequest) -> HttpResponse:
        request_id = log_context.sane_request_id(request.headers.get("X-Request-ID"))
        started = time.monotonic()
        with log_context.bound(request_id=request_id, promotion_request_id=None):
            response = get_response(request)
            # The path without its query string: a link's token must not reach the logs.
            access_log.info(
                "%s %s %s",
                request.method,
                request.path,
                response.status_code,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status_code": response.status_code,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                },
            )
            if response.status_code >= 400:
                # Django logs an error response after the last middleware returns, when the id
                # is no longer bound; logged here (as Django would), it is logged once, with it.
                log_response(
                    "%s: %s", response.reason_phrase, request.path, response=response, request=request
                )
        response["X-Request-ID"] = request_id
        return response

    return middleware
