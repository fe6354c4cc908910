"""Helpers shared by the benchmarks in bench/: a throwaway MLflow server and a throwaway Django.

Nothing here touches var/ or the developer's own databases: every file lives in a temporary
directory that the caller owns.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group started with start_new_session, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, 9)
            process.wait(timeout=15)
        except ProcessLookupError:
            pass


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with code {process.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@contextmanager
def mlflow_server(workdir: Path, *, workers: int = 2) -> Iterator[str]:
    """Run `mlflow server` on a SQLite store in workdir, on a free loopback port; yield its URL.

    The server runs in its own process group, which is killed on the way out, error or not.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_path = workdir / "mlflow.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{workdir / 'mlflow.db'}",
                "--artifacts-destination",
                str(workdir / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_for_http(f"{url}/health", process)
        except RuntimeError as exc:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}\n--- mlflow.log (tail) ---\n{tail}") from None
        yield url
    finally:
        stop_process_group(process)


def setup_django(workdir: Path, *, mlflow_url: str, migrate: bool = True) -> None:
    """Point the project's settings at throwaway SQLite files in workdir, then django.setup().

    Settings are read once, at start-up, so this must run before anything imports Django models.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.update(
        {
            "DEBUG": "true",
            "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
            "CELERY_BROKER_URL": f"sqla+sqlite:///{workdir / 'broker.sqlite3'}",
            "MLFLOW_TRACKING_URI": mlflow_url,
            "DJANGO_SETTINGS_MODULE": "config.settings",
        }
    )
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)


def fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
