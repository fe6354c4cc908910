"""Bad configuration stops start-up with one line naming the variable."""

import subprocess

import pytest

from bench.common import ROOT
from tests.conftest import PYTHON


def run_check(**env):
    base = {"PATH": "/usr/bin:/bin", "DEBUG": "true", "HOME": "/tmp"}
    return subprocess.run(
        [PYTHON, "manage.py", "check"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DATABASE_URL", "mysql://root@localhost/x", "DATABASE_URL='mysql://root@localhost/x'"),
        ("DATABASE_URL", "nonsense", "DATABASE_URL='nonsense'"),
        ("CELERY_BROKER_URL", "kafka://broker:9092", "CELERY_BROKER_URL='kafka://broker:9092'"),
        ("MLFLOW_TRACKING_URI", "ftp://mlflow", "MLFLOW_TRACKING_URI='ftp://mlflow'"),
        ("MLFLOW_TRACKING_URI", "http://:5000", "MLFLOW_TRACKING_URI='http://:5000' has no host name"),
        ("DEBUG", "maybe", "DEBUG='maybe' is not a boolean"),
        ("SYNC_INTERVAL_SECONDS", "soon", "SYNC_INTERVAL_SECONDS='soon' is not a whole number"),
        ("PROMOTION_DRIFT_WINDOW_SECONDS", "0", "PROMOTION_DRIFT_WINDOW_SECONDS=0 must be at least 1"),
        (
            "PROMOTION_MANIFEST_CHECK",
            "fast",
            "PROMOTION_MANIFEST_CHECK='fast' is not one of: full, quick, off",
        ),
    ],
)
def test_it_refuses_a_malformed_variable_with_one_line(variable, value, expected):
    result = run_check(**{variable: value})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Configuration error:")
    assert expected in lines[0]


def test_it_requires_a_secret_key_when_debug_is_off():
    result = run_check(DEBUG="false")
    assert result.returncode == 2
    assert "SECRET_KEY is required when DEBUG is off" in result.stderr


def test_it_accepts_postgres_and_redis_urls():
    result = run_check(
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/anything",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/3",
        MLFLOW_TRACKING_URI="https://mlflow.example.com",
    )
    assert result.returncode == 0, result.stderr


def test_production_settings_pass_the_deploy_check():
    result = subprocess.run(
        [PYTHON, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "DEBUG": "false",
            "SECRET_KEY": "x" * 20 + "-production-like-secret-key-with-enough-entropy-0123456789",
            "ALLOWED_HOSTS": "promotions.example.com",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_to_start_without_binding_approvals_to_the_files():
    result = run_check(DEBUG="false", SECRET_KEY="x" * 50, PROMOTION_MANIFEST_CHECK="off")
    assert result.returncode == 2
    assert "PROMOTION_MANIFEST_CHECK=off is for development (DEBUG=true) only" in result.stderr
