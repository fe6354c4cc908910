"""`manage.py register_mlflow_webhook`: make MLflow send its registry events to this site.

Idempotent: the webhook is found by its name ("promotions-" + SITE_URL's host, port and path)
and updated in place (URL, events, secret, active again), or created when there is none;
duplicates of that name (two runs at once) are deleted. MLflow never returns a webhook's
secret, so it is always sent: running the command again after changing MLFLOW_WEBHOOK_SECRET
rotates it.
"""

from __future__ import annotations

import hashlib
import os
import re
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from registry_sync import gateway

EVENTS = [
    "registered_model.created",
    "model_version.created",
    "model_version_tag.set",
    "model_version_tag.deleted",
    "model_version_alias.created",
    "model_version_alias.deleted",
]
DEFAULT_SITE_URL = "http://127.0.0.1:8000"  # config/settings.py's default for SITE_URL


def webhook_name(site_url: str) -> str:
    """ "promotions-" and the site's host, port and path, as MLflow allows a webhook's name:
    letters, digits, dots, underscores and hyphens, under 63 characters, alphanumeric at both
    ends. A long address is shortened, with a digest of the whole so two sites never share one."""
    parts = urlsplit(site_url.rstrip("/"))
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", f"{parts.netloc}{parts.path}").strip("-._")
    name = f"promotions-{slug}" if slug else "promotions"
    if len(name) > 62:
        digest = hashlib.sha256(site_url.rstrip("/").encode()).hexdigest()[:10]
        name = f"{name[:50].rstrip('-._')}-{digest}"
    return name


class Command(BaseCommand):
    help = "Create or update the MLflow webhook that sends registry events to SITE_URL/hooks/mlflow/."

    def handle(self, *args, **options):
        secret = settings.MLFLOW_WEBHOOK_SECRET
        site_url = (settings.SITE_URL or "").rstrip("/")
        if not secret:
            raise CommandError(
                "MLFLOW_WEBHOOK_SECRET is not set: MLflow would send unsigned events, which "
                "/hooks/mlflow/ refuses. Set it (the same value for web and this command) and run again."
            )
        if not site_url or (site_url == DEFAULT_SITE_URL and "SITE_URL" not in os.environ):
            raise CommandError(
                "SITE_URL is not set: MLflow needs the address it reaches this site at, "
                "e.g. SITE_URL=https://promotions.example.com."
            )
        url = site_url + reverse("mlflow_webhook")
        name = webhook_name(site_url)
        fields = {
            "name": name,
            "url": url,
            "events": EVENTS,
            "secret": secret,
            "description": "Registry events for the promotion service's mirror (POST /hooks/mlflow/).",
        }
        try:
            # The oldest is kept: the one an earlier run made.
            same_name = sorted(
                (hook for hook in gateway.list_webhooks() if hook.name == name),
                key=lambda hook: (hook.creation_timestamp or 0, hook.webhook_id),
            )
            if same_name:
                hook = gateway.update_webhook(same_name[0].webhook_id, **fields)
                for duplicate in same_name[1:]:
                    gateway.delete_webhook(duplicate.webhook_id)
                verb = "Updated"
            else:
                hook = gateway.create_webhook(**fields)
                verb = "Created"
        except gateway.RegistryUnavailable as exc:
            raise CommandError(f"MLflow is not answering: {exc}", returncode=3) from None
        except gateway.RegistryError as exc:
            raise CommandError(f"MLflow refused the webhook: {exc}") from None
        self.stdout.write(
            self.style.SUCCESS(f"{verb} MLflow webhook {hook.webhook_id} '{hook.name}' → {hook.url}")
        )
        self.stdout.write(f"Events: {', '.join(hook.events)}")
