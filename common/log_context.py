"""What a log line is about: the web request, the task and the promotion request being handled.

The request id middleware and the task signal handlers (promotions/task_context.py) bind these
for the length of one request or one task; `ContextFilter` copies them onto every log record, so
the JSON format (common/log_format.py) can write them. A web request's id also travels in the
headers of every task it publishes, so one id follows an approval from the page to the apply.
It lives in `common`, below every app, as the project's logging set-up reads it.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

FIELDS = ("request_id", "task_id", "task_name", "promotion_request_id")
# A client's or proxy's id is kept only when it cannot mangle a log line: bounded, no spaces,
# no line breaks, no quotes (uuids, AWS trace ids and the like fit).
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=+/-]{0,63}")

_fields: dict[str, ContextVar[str | int | None]] = {
    name: ContextVar(f"log_{name}", default=None) for name in FIELDS
}


def sane_request_id(value: str | None) -> str:
    """`value` when it is a sane token, else a new random id."""
    if value and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


@contextmanager
def bound(**values: str | int | None) -> Iterator[None]:
    """Within it, log records carry `values` (names from FIELDS); the previous ones after."""
    tokens = bind(**values)
    try:
        yield
    finally:
        unbind(tokens)


def bind(**values: str | int | None) -> list:
    """Bind `values` until `unbind(tokens)`: for a start and an end in two different calls
    (Celery's task_prerun and task_postrun signals)."""
    return [(_fields[name], _fields[name].set(value)) for name, value in values.items()]


def unbind(tokens: list) -> None:
    for var, token in reversed(tokens):
        try:
            var.reset(token)
        except (ValueError, RuntimeError):  # bound in another context, or reset already: clear it
            var.set(None)


def bind_promotion_request(pk: int) -> None:
    """The rest of the current web request or task is about promotion request `pk` (the
    request id middleware and the task signals put the previous value back at their end)."""
    _fields["promotion_request_id"].set(pk)


def current(name: str) -> str | int | None:
    return _fields[name].get()


class ContextFilter(logging.Filter):
    """Copy the bound context onto each record (None where nothing is bound); a value the
    caller passed in `extra` stands."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _fields.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True
