"""Loaded by pytest before Django (see pyproject's addopts): defaults for the test run.

Settings are read once, at Django's start, so these must be in the environment first.
Anything already set (CI's DATABASE_URL and CELERY_BROKER_URL) wins.
"""

import os
import shutil
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent

# DEBUG here only relaxes start-up (no SECRET_KEY needed, no HTTPS redirect); Django's test
# runner still runs every test with settings.DEBUG = False.
os.environ.setdefault("DEBUG", "true")
# The test MLflow server and clients send no usage telemetry (there is no network here anyway).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# The suite's webhook receivers listen on loopback; the tests of the address check turn it on.
os.environ.setdefault("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true")
# Most tests register versions with no model files (a run without artifacts, or mirror rows
# alone): they test the workflow around them. The tests of the model files turn the check on
# (tests/test_artifact_manifest.py), as the webhook address tests do above.
os.environ.setdefault("PROMOTION_MANIFEST_CHECK", "off")
# The embedded broker and database files belong to `make run`; each test run gets its own,
# so two runs at once (a developer's and a CI check) never share a queue or a database.
RUN_ID = os.getpid()
os.environ.setdefault(
    "CELERY_BROKER_URL", f"sqla+sqlite:///{_ROOT / 'var' / f'test-celery-{RUN_ID}.sqlite3'}"
)
os.environ.setdefault("TEST_DATABASE_NAME", str(_ROOT / "var" / f"test_db_{RUN_ID}.sqlite3"))
# The counters every process of the run writes for /metrics (the web's, the worker fixture's).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_ROOT / "var" / f"test-prometheus-{RUN_ID}"))


def pytest_sessionfinish(session, exitstatus):
    for pattern in (f"test-celery-{RUN_ID}.sqlite3*", f"test_db_{RUN_ID}.sqlite3*"):
        for leftover in (_ROOT / "var").glob(pattern):
            leftover.unlink(missing_ok=True)
    shutil.rmtree(_ROOT / "var" / f"test-prometheus-{RUN_ID}", ignore_errors=True)


(_ROOT / "var").mkdir(exist_ok=True)
