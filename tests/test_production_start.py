"""The README's production start, run as written, creates no account and seeds nothing.

The commands come from the README's "Using existing servers" block itself, so the test follows
the documentation: if the README changes the start, this test starts the new one.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import sqlite3
import subprocess
import time

import pytest
import requests

from bench.common import ROOT, answers, free_port, start_process, stop_process_group, wait_for_process

# Its own SQLite database and broker, as the README's start is tried on one machine.
pytestmark = [pytest.mark.worker, pytest.mark.once]

DEMO_PASSWORD = "promote-demo"


def readme_production_block() -> tuple[dict[str, str], list[str]]:
    """The exported variables and the commands of the README's production start."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Using existing servers", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    exported: dict[str, str] = {}
    commands: list[str] = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("export "):
            for assignment in line.removeprefix("export ").split():
                name, _, value = assignment.partition("=")
                exported[name] = value
        else:
            commands.append(line)
    return exported, commands


def local_stand_ins(exported: dict[str, str], tmp_path, mlflow_url: str) -> dict[str, str]:
    """Each server the README names, replaced by one on this machine; everything else as written."""
    stand_ins = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'production.sqlite3'}",
        "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}",
        "MLFLOW_TRACKING_URI": mlflow_url,
        "MLFLOW_TRACKING_TOKEN": "not-checked-by-the-test-server",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "ALLOWED_HOSTS": "127.0.0.1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    }
    return {name: stand_ins.get(name, value) for name, value in exported.items()}


def test_the_readme_names_a_production_start_with_debug_off():
    exported, commands = readme_production_block()
    assert exported.get("DEBUG") == "false"
    assert any("migrate" in command for command in commands)
    assert any("honcho start" in command for command in commands)


def test_the_documented_production_start_creates_no_account(mlflow_server, tmp_path):
    exported, commands = readme_production_block()
    port = free_port()
    env = {
        "PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "WEB_BIND": f"127.0.0.1:{port}",
        **local_stand_ins(exported, tmp_path, mlflow_server.url),
    }
    *setup, start = commands
    for command in setup:
        done = subprocess.run(
            command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"

    log_path = tmp_path / "honcho.log"
    process = start_process(start, shell=True, log_path=log_path, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        https = {"X-Forwarded-Proto": "https"}

        def every_process_is_up() -> bool:
            # Every process of the start is up: the web answers, the worker and beat said so.
            output = log_path.read_text(errors="replace")
            return (
                answers(f"{base}/healthz", statuses=(200, 503))
                and " ready." in output
                and "beat: Starting" in output
            )

        wait_for_process(
            process, every_process_is_up, what="the production start", interval=0.5, log_path=log_path
        )

        with sqlite3.connect(tmp_path / "production.sqlite3") as db:
            users = db.execute("SELECT username FROM auth_user").fetchall()
        assert users == []

        # And through the front door: no demo name signs in with the published password.
        for username in ("riley", "rex", "rita", "sam", "alice"):
            session = requests.Session()
            form = session.get(f"{base}/accounts/login/", headers=https, timeout=5)
            assert form.status_code == 200
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
            # The CSRF cookie is Secure; this plain-HTTP client hands it back by hand.
            answer = session.post(
                f"{base}/accounts/login/",
                data={"username": username, "password": DEMO_PASSWORD, "csrfmiddlewaretoken": token},
                headers={
                    **https,
                    "Referer": f"https://127.0.0.1:{port}/accounts/login/",
                    "Cookie": f"csrftoken={form.cookies['csrftoken']}",
                },
                allow_redirects=False,
                timeout=5,
            )
            assert answer.status_code == 200, (username, answer.status_code)
            assert "sessionid" not in answer.cookies

        # The operator creates the first account as the README says; its session cookie, like
        # the CSRF cookie, is Secure, HttpOnly and SameSite=Lax outside DEBUG.
        created = subprocess.run(
            ".venv/bin/python manage.py createsuperuser --noinput --username boss --email boss@example.com",
            shell=True,
            cwd=ROOT,
            env={**env, "DJANGO_SUPERUSER_PASSWORD": "a-long-operator-password-1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert created.returncode == 0, created.stderr
        form = requests.get(f"{base}/accounts/login/", headers=https, timeout=5)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        signed_in = requests.post(
            f"{base}/accounts/login/",
            data={"username": "boss", "password": "a-long-operator-password-1", "csrfmiddlewaretoken": token},
            headers={
                **https,
                "Referer": f"https://127.0.0.1:{port}/accounts/login/",
                "Cookie": f"csrftoken={form.cookies['csrftoken']}",
            },
            allow_redirects=False,
            timeout=5,
        )
        assert signed_in.status_code == 302, signed_in.text[:500]
        cookies = {
            header.split("=", 1)[0]: header.lower()
            for header in [
                *form.raw.headers.getlist("Set-Cookie"),
                *signed_in.raw.headers.getlist("Set-Cookie"),
            ]
        }
        for name in ("sessionid", "csrftoken"):
            flags = cookies[name]
            assert "; secure" in flags and "; httponly" in flags and "samesite=lax" in flags, (name, flags)

        # Ctrl-C in the terminal (SIGINT to the whole group): web, worker and beat are gone within
        # 10 s, each by itself. A group with no process left refuses even signal 0.
        os.killpg(process.pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (process.poll() is None or group_alive(process.pid)):
            time.sleep(0.2)
        output = log_path.read_text(errors="replace")
        assert not group_alive(process.pid), output[-3000:]
        # Each stopped by itself: honcho did not have to kill anything after its 5 s.
        assert "sending SIGKILL" not in output, output[-3000:]
    finally:
        stop_process_group(process)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
