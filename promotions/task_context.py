"""Carry the log context into tasks, and give worker and beat the configured log format.

A task published while a web request (or another task) is handled carries that request id in a
message header; the worker binds it, with the task's id and name and, for the tasks that work
on one promotion request, that request's pk, for every line the task logs
(common/log_context.py). Connected from PromotionsConfig.ready(), which every worker and beat
process runs when Celery sets Django up, before it sets up its logging.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    before_task_publish,
    task_postrun,
    task_prerun,
)
from django.conf import settings

from common import log_context
from common.log_format import JsonFormatter
from promotions.services.lifecycle import APPLY_TASK
from promotions.services.manifest import MANIFEST_TASK

REQUEST_ID_HEADER = "x_request_id"
# Tasks whose first argument (`request_id`) is a promotion request's pk.
PROMOTION_REQUEST_TASKS = frozenset({APPLY_TASK, MANIFEST_TASK})

_bound: dict[str, list] = {}  # task id -> what task_prerun bound, for task_postrun to undo


def add_request_id_header(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    request_id = log_context.current("request_id")
    if headers is not None and request_id and REQUEST_ID_HEADER not in headers:
        headers[REQUEST_ID_HEADER] = request_id


def _promotion_request_id(task: Task, args: Any, kwargs: Any) -> int | None:
    if task.name not in PROMOTION_REQUEST_TASKS:
        return None
    value = (kwargs or {}).get("request_id", args[0] if args else None)
    return value if isinstance(value, int) else None


def bind_task(task_id: str, task: Task, args: Any = None, kwargs: Any = None, **extra: Any) -> None:
    header = getattr(task.request, REQUEST_ID_HEADER, None)
    _bound[task_id] = log_context.bind(
        request_id=log_context.sane_request_id(header) if header else None,
        task_id=task_id,
        task_name=task.name,
        promotion_request_id=_promotion_request_id(task, args, kwargs),
    )


def unbind_task(task_id: str, **extra: Any) -> None:
    tokens = _bound.pop(task_id, None)
    if tokens is not None:
        log_context.unbind(tokens)


def format_celery_handlers(logger: logging.Logger, **kwargs: Any) -> None:
    """Celery replaces Django's log handlers with its own: give those the context and, with
    LOG_FORMAT=json, the JSON format (config/celery.py gives them the redaction)."""
    for handler in logger.handlers:
        if not any(isinstance(existing, log_context.ContextFilter) for existing in handler.filters):
            handler.addFilter(log_context.ContextFilter())
        if settings.LOG_FORMAT == "json":
            handler.setFormatter(JsonFormatter())


def connect() -> None:
    before_task_publish.connect(add_request_id_header, dispatch_uid="log-request-id-header")
    task_prerun.connect(bind_task, dispatch_uid="log-bind-task")
    task_postrun.connect(unbind_task, dispatch_uid="log-unbind-task")
    after_setup_logger.connect(format_celery_handlers, dispatch_uid="log-format-worker")
    after_setup_task_logger.connect(format_celery_handlers, dispatch_uid="log-format-worker-tasks")
