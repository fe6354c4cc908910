"""Verification of inbound MLflow webhooks (MLflow's own signing scheme)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-MLflow-Signature"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
TOLERANCE_SECONDS = 300


class WebhookRefused(Exception):
    pass


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(*, secret: str, headers, body: bytes, now: float | None = None) -> str:
    """Return the delivery id of a correctly signed, fresh delivery; raise WebhookRefused."""
    if not secret:
        raise WebhookRefused("webhooks are disabled: MLFLOW_WEBHOOK_SECRET is not set")
    signature = headers.get(SIGNATURE_HEADER, "")
    delivery_id = headers.get(DELIVERY_HEADER, "")
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    if not signature or not delivery_id or not timestamp:
        raise WebhookRefused(f"missing {SIGNATURE_HEADER}, {DELIVERY_HEADER} or {TIMESTAMP_HEADER}")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookRefused(f"{TIMESTAMP_HEADER} is not a Unix timestamp") from None
    now = time.time() if now is None else now
    if abs(now - sent_at) > TOLERANCE_SECONDS:
        raise WebhookRefused(f"stale delivery: timestamp is more than {TOLERANCE_SECONDS} s away")
    expected = sign(secret, delivery_id, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise WebhookRefused("bad signature")
    return delivery_id
