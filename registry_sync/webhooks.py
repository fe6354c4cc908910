"""Verification of inbound MLflow webhooks (MLflow's own signing schemes).

Both carry the signature in `X-MLflow-Signature`:

- current (MLflow >= 3.3 as released, mlflow/webhooks/delivery.py): `v1,<base64 HMAC-SHA256 of
  "{delivery_id}.{timestamp}.{body}">`, with `X-MLflow-Delivery-Id` and `X-MLflow-Timestamp`
  (Unix seconds). The id and the time are signed: the id de-duplicates, the time must be fresh.
- older (MLflow's first webhook dispatch, before the structured payloads): `sha256=<hex
  HMAC-SHA256 of the body>`. Only the body is signed, so nothing outside it is trusted: the
  delivery is de-duplicated by the body's digest, and its time is the body's `timestamp`
  (ISO 8601) or, failing that, `X-MLflow-Timestamp`; a delivery with neither is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime

SIGNATURE_HEADER = "X-MLflow-Signature"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
TOLERANCE_SECONDS = 300
LEGACY_PREFIX = "sha256="


class WebhookRefused(Exception):
    pass


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_legacy(secret: str, body: bytes) -> str:
    return LEGACY_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(*, secret: str, headers, body: bytes, now: float | None = None) -> str:
    """Return the delivery's key for de-duplication (its delivery id, or the digest of an older
    form's body) if it is correctly signed and fresh; raise WebhookRefused otherwise."""
    if not secret:
        raise WebhookRefused("webhooks are disabled: MLFLOW_WEBHOOK_SECRET is not set")
    now = time.time() if now is None else now
    signature = headers.get(SIGNATURE_HEADER, "")
    if signature.startswith(LEGACY_PREFIX):
        return _verify_legacy(secret, signature, headers, body, now)
    delivery_id = headers.get(DELIVERY_HEADER, "")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    if not signature or not delivery_id or not timestamp:
        raise WebhookRefused(f"missing {SIGNATURE_HEADER}, {DELIVERY_HEADER} or {TIMESTAMP_HEADER}")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookRefused(f"{TIMESTAMP_HEADER} is not a Unix timestamp") from None
    _check_fresh(sent_at, now)
    expected = sign(secret, delivery_id, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise WebhookRefused("bad signature")
    return delivery_id


def _verify_legacy(secret: str, signature: str, headers, body: bytes, now: float) -> str:
    if not hmac.compare_digest(sign_legacy(secret, body).encode(), signature.encode()):
        raise WebhookRefused("bad signature")
    sent_at = _body_time(body)
    if sent_at is None:
        header = headers.get(TIMESTAMP_HEADER, "")
        if not header:
            raise WebhookRefused(
                f"stale delivery: a {LEGACY_PREFIX} signature needs a timestamp in the body "
                f"or {TIMESTAMP_HEADER}"
            )
        try:
            sent_at = int(header)
        except ValueError:
            raise WebhookRefused(f"{TIMESTAMP_HEADER} is not a Unix timestamp") from None
    _check_fresh(sent_at, now)
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _body_time(body: bytes) -> float | None:
    try:
        stamp = json.loads(body).get("timestamp")
        moment = datetime.fromisoformat(stamp)
    except (ValueError, TypeError, AttributeError):
        return None
    if moment.tzinfo is None:
        return None  # a time with no zone cannot be compared with ours
    return moment.timestamp()


def _check_fresh(sent_at: float, now: float) -> None:
    if abs(now - sent_at) > TOLERANCE_SECONDS:
        raise WebhookRefused(f"stale delivery: timestamp is more than {TOLERANCE_SECONDS} s away")
