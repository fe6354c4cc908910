"""Who runs a management command: the operating-system user and the host, for the audit log.

Anyone holding the database credentials can run `manage.py` and act as any user of the product
(`request_promotion --user`, `create_api_token`); the product cannot prevent that, so it names
the account and machine the command ran from in every entry the command records. It lives in
`common` so commands of every app (the mirror's `sync_registry` included) can use it, and the
audit log reads it.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_operator: ContextVar[dict[str, str] | None] = ContextVar("cli_operator", default=None)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return "unknown"


@contextmanager
def acting_from_cli() -> Iterator[dict[str, str]]:
    """Within it (or a `handle` it decorates), audit entries name this OS user and host."""
    operator = {"os_user": _os_user(), "host": socket.gethostname()}
    token = _operator.set(operator)
    try:
        yield operator
    finally:
        # A command run through call_command (tests, another command) must not leave the
        # operator behind for whatever the process does next.
        _operator.reset(token)


def cli_operator() -> dict[str, str] | None:
    """The operator of the running command, or None outside one."""
    return _operator.get()
