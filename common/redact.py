"""Take credentials out of a text before it is stored, logged or shown.

Error texts carry whatever the failing library put in them: a URL with its password, a
connection string, a header. Every place that turns an error into text (the MLflow gateway,
the sync, an apply failure, `/healthz`, webhook deliveries, every log record) passes it
through `redact()`. It lives in `common`, below every app, so the gateway, the mirror, the workflow and
the project's logging set-up can all use it without an import running up the layers.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

from django.conf import settings

MASK = "***"
# scheme://userinfo@ — userinfo stops at anything that ends a URL's authority part, so a
# path or an e-mail address after the host is left as it is.
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^\s/?#@'\"<>]+@")
# An Authorization header quoted in an error ("Authorization: Bearer abc", "'Authorization':
# 'Basic ...'"), or a bare bearer token: the scheme stays, the credential goes.
_AUTHORIZATION = re.compile(
    r"(?P<name>\bauthorization['\"]?\s*[:=]\s*['\"]?(?:(?:bearer|basic|token)\s+)?)[^\s'\",;}]+"
    r"|(?P<bearer>\b(?-i:Bearer)\s+)[A-Za-z0-9._~+/=-]{8,}",
    re.IGNORECASE,
)
# A value this short cannot be told apart from ordinary words, and replacing it everywhere
# would mangle the text it is meant to protect; it is no real protection anyway.
_MIN_SECRET_LENGTH = 4
# Set by MLflow's own client from the environment, never through our settings.
_SECRET_ENVIRONMENT = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_SECRET_SETTINGS = (
    "SECRET_KEY",
    "MLFLOW_WEBHOOK_SECRET",
    "EMAIL_HOST_PASSWORD",
    "HEALTHZ_TOKEN",
    "METRICS_TOKEN",
)
_SECRET_URL_SETTINGS = ("MLFLOW_TRACKING_URI", "CELERY_BROKER_URL", "CELERY_BROKER_WRITE_URL")


def url_password(url: object) -> str:
    """The password in a URL's userinfo, or ""."""
    if not isinstance(url, str) or "@" not in url:
        return ""
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


def configured_secrets(*, also: Iterable[str] = ()) -> list[str]:
    """Every secret value this process is configured with (and `also`), read anew on each call
    (tests and deployments may change settings after start-up), longest first so a secret that
    contains another is masked whole."""
    values = [*also, *(os.environ.get(name, "") for name in _SECRET_ENVIRONMENT)]
    values += [str(getattr(settings, name, "") or "") for name in _SECRET_SETTINGS]
    values += [url_password(getattr(settings, name, "")) for name in _SECRET_URL_SETTINGS]
    values += [str(database.get("PASSWORD") or "") for database in settings.DATABASES.values()]
    found: set[str] = set()
    for value in values:
        # A password in a URL is percent-encoded there and plain in a library's message.
        for form in (value, unquote(value), quote(value, safe="")):
            if len(form) >= _MIN_SECRET_LENGTH:
                found.add(form)
    return sorted(found, key=len, reverse=True)


def redact(text: str, *, also: Iterable[str] = ()) -> str:
    """`text` with the userinfo of every URL and every configured secret replaced by ***.

    `also`: secrets only the caller knows (a webhook endpoint's password and signing secret).
    """
    if not text:
        return text
    text = _USERINFO.sub(rf"\g<scheme>{MASK}@", str(text))
    text = _AUTHORIZATION.sub(lambda m: (m.group("name") or m.group("bearer")) + MASK, text)
    for secret in configured_secrets(also=also):
        text = text.replace(secret, MASK)
    return text


_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)


class RedactingFilter(logging.Filter):
    """Redact a log record's message, traceback and `extra` texts before any handler writes it.

    The message is rendered here (and its arguments dropped) because a secret usually arrives
    as an argument, and the traceback because an exception's text is where URLs hide.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is logging's to report, not ours
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _RECORD_ATTRIBUTES and isinstance(value, str):
                setattr(record, name, redact(value))
        return True
