"""Servers and set-up shared by the benchmarks in bench/ and the test suite in tests/: a throwaway
MLflow server, Celery workers, in-thread HTTP stand-ins and a throwaway Django.

Nothing here touches var/ or the developer's own databases: every file lives in a temporary
directory that the caller owns.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- processes --------------------------------------------------------------------------------


def start_process(
    command: str | Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str],
    cwd: Path = ROOT,
    shell: bool = False,
) -> subprocess.Popen:
    """Start command in a process group of its own, its output appended to log_path.

    Its own group lets stop_process_group end whatever it forks (gunicorn's and Celery's
    children, honcho's processes) and keeps a Ctrl-C in the terminal from reaching it first.
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            shell=shell,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_process_group(process: subprocess.Popen) -> None:
    """SIGKILL the whole group at once: what a crash or the OOM killer does to a process."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)
    except ProcessLookupError:
        pass


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group started with start_new_session, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        kill_process_group(process)


def log_tail(log_path: Path | None, chars: int = 3000) -> str:
    if log_path is None or not log_path.exists():
        return ""
    return f"\n--- {log_path.name} (tail) ---\n{log_path.read_text(errors='replace')[-chars:]}"


def wait_until(
    predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.2, message: str = "condition"
) -> T:
    """Call predicate until it returns something true, and return that; TimeoutError after timeout s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {message}")


def wait_for_process(
    process: subprocess.Popen,
    ready: Callable[[], object],
    *,
    what: str,
    timeout: float = 120.0,
    interval: float = 0.3,
    log_path: Path | None = None,
) -> None:
    """Wait until ready() is true; fail at once, with the log's tail, if the process exits first."""

    def ready_while_running() -> object:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}{log_tail(log_path)}")
        return ready()

    try:
        wait_until(ready_while_running, timeout=timeout, interval=interval, message=what)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}{log_tail(log_path)}") from None


def answers(url: str, statuses: Sequence[int] = (200,)) -> bool:
    try:
        return requests.get(url, timeout=2).status_code in statuses
    except requests.RequestException:
        return False


def wait_for_http(
    url: str, process: subprocess.Popen, timeout: float = 120.0, *, log_path: Path | None = None
) -> None:
    wait_for_process(
        process, lambda: answers(url), what=f"the process serving {url}", timeout=timeout, log_path=log_path
    )


@contextmanager
def mlflow_server(workdir: Path, *, workers: int = 2) -> Iterator[str]:
    """Run `mlflow server` on a SQLite store in workdir, on a free loopback port; yield its URL.

    The server runs in its own process group, which is killed on the way out, error or not.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "mlflow.log"
    process = start_process(
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
        log_path=log_path,
        cwd=workdir,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    try:
        wait_for_http(f"{url}/health", process, log_path=log_path)
        yield url
    finally:
        stop_process_group(process)


def start_celery_worker(
    app: str,
    *,
    log_path: Path,
    env: dict[str, str],
    concurrency: int,
    name: str,
    options: Sequence[str] = (),
) -> subprocess.Popen:
    """A real `celery -A app worker --pool threads` in its own process group (stop_process_group
    ends it); name, with a random suffix, is its host name, so that workers started side by side
    on one broker are told apart."""
    return start_process(
        [
            str(BIN / "celery"),
            "-A",
            app,
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"{name}-{uuid.uuid4().hex[:6]}@%h",
            *options,
        ],
        log_path=log_path,
        env=env,
    )


# --- HTTP stand-ins in this process ------------------------------------------------------------


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps its access log out of the test or benchmark output."""

    def log_message(self, *args: object) -> None:
        pass


def serve_in_thread(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """Serve handler on a free loopback port from a daemon thread; return the server and its URL.
    End it with stop_serving."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def stop_serving(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


# --- Django -----------------------------------------------------------------------------------


def setup_django(
    workdir: Path,
    *,
    mlflow_url: str,
    migrate: bool = True,
    database_url: str | None = None,
    broker_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> None:
    """Point the project's settings at throwaway SQLite files in workdir (or at the database and
    broker given), then django.setup().

    Settings are read once, at start-up, so this must run before anything imports Django models.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.update(
        {
            "DEBUG": "true",
            "DATABASE_URL": database_url or f"sqlite:///{workdir / 'bench.sqlite3'}",
            "CELERY_BROKER_URL": broker_url or f"sqla+sqlite:///{workdir / 'broker.sqlite3'}",
            "MLFLOW_TRACKING_URI": mlflow_url,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            **(extra_env or {}),
        }
    )
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)


def fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
