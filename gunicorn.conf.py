"""Gunicorn's settings file, which it reads from the working directory at start.

Gunicorn's own lines (start-up, a worker's timeout or crash) go through the project's log
handler, in LOG_FORMAT, so that with `json` the web writes JSON only (docs/operations.md#logs).
Its access line gives way to the request id middleware's (`promotions.access`), which carries
the request id: gunicorn writes its own after the request, when the id is no longer known.
"""

import os

from django.conf import settings  # read lazily: after the settings module is named below

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

logconfig_dict = {
    **settings.LOGGING,
    "loggers": {
        **settings.LOGGING["loggers"],
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
    },
}
