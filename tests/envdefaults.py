"""Loaded by pytest before Django (see pyproject's addopts): defaults for the test run.

Settings are read once, at Django's start, so these must be in the environment first.
Anything already set (CI's DATABASE_URL and CELERY_BROKER_URL) wins.
"""

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent

# DEBUG here only relaxes start-up (no SECRET_KEY needed, no HTTPS redirect); Django's test
# runner still runs every test with settings.DEBUG = False.
os.environ.setdefault("DEBUG", "true")
# The embedded broker file belongs to `make run`; the suite gets its own.
os.environ.setdefault("CELERY_BROKER_URL", f"sqla+sqlite:///{_ROOT / 'var' / 'test-celery.sqlite3'}")
(_ROOT / "var").mkdir(exist_ok=True)
