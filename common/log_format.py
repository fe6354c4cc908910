"""LOG_FORMAT=json: one JSON object per line, for log collectors.

Fields: timestamp (UTC, ISO 8601), level, logger, message, request_id, task_id, task_name,
promotion_request_id (null where not known), exc_info (the traceback as one string) and any
`extra` the caller passed. Every string in it is redacted once more here: the formatter renders
the traceback itself, and an `extra` value is no part of the message RedactingFilter cleans.
"""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.json import JsonFormatter as LibraryJsonFormatter

from common.log_context import FIELDS
from common.redact import redact

_RENAMED = {"levelname": "level", "name": "logger"}
_RECORD_ATTRIBUTES = tuple(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
# Extras that are no field of ours: Celery's log line arguments as a dict (task arguments
# included), and Django's HttpRequest (its text is the full URL, query string and all).
_NOT_FIELDS = ("data", "request", "message", "asctime")


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    # Anything else is written as its text (the library's default); redact that text.
    return redact(str(value))


class JsonFormatter(LibraryJsonFormatter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("timestamp", True)
        kwargs.setdefault("rename_fields", _RENAMED)
        kwargs.setdefault("reserved_attrs", [*_RECORD_ATTRIBUTES, *_NOT_FIELDS])
        super().__init__(["levelname", "name", "message", *FIELDS], *args, **kwargs)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        timestamp = log_data.pop("timestamp")
        fields = {"timestamp": timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
        return fields | {key: _redacted(value) for key, value in log_data.items()}
