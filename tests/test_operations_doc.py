"""docs/operations.md's Deployment section, run as written.

Every ```sh block of the section follows a line `<!-- run by tests/test_operations_doc.py::TEST -->`
and TEST runs it: the section's first block (the environment) with each exported value replaced
by a stand-in on this machine (PostgreSQL databases and roles of random names on 127.0.0.1, a
SQLite broker, the session's MLflow server, a temporary backup directory), then the test's own
blocks, in a shell that stops at the first failing command. If the documentation changes a
command, these tests run the new one.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import requests
from django.conf import settings

from bench.common import ROOT, free_port, start_process, stop_process_group, wait_for_process
from config.celery import app as celery_app

# Its own databases, roles and broker, whatever the run is configured with.
pytestmark = pytest.mark.once

DOC = ROOT / "docs" / "operations.md"
MARKER = re.compile(r"<!-- run by tests/test_operations_doc\.py::(\w+) -->")
SH_BLOCK = re.compile(r"^(?P<indent>[ ]*)```sh\n(?P<body>.*?)^(?P=indent)```$", re.M | re.S)
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
AUDIT_TABLE = "promotions_auditevent"


@dataclass
class Block:
    test: str | None  # the test its marker names
    body: str


def deployment_section() -> str:
    text = DOC.read_text()
    section = text.split("\n## Deployment\n", 1)[1]
    return section.split("\n## ", 1)[0]


def sh_blocks() -> list[Block]:
    section = deployment_section()
    blocks = []
    for match in SH_BLOCK.finditer(section):
        before = section[: match.start()].rstrip("\n ").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        body = textwrap.dedent(match.group("indent") + match.group("body"))
        blocks.append(Block(marker.group(1) if marker else None, body))
    return blocks


def blocks_of(test: str) -> list[str]:
    """The blocks `test` runs, the environment block left out (every test runs that first)."""
    bodies = [block.body for block in sh_blocks()[1:] if block.test == test]
    assert bodies, f"docs/operations.md has no block for {test}"
    return bodies


def localised(block: str, stand_ins: dict[str, str]) -> str:
    """`block` with each exported variable's value replaced by its stand-in; a placeholder
    (`...`) without one fails, so a new secret in the documentation needs a stand-in here."""
    lines = []
    for line in block.splitlines():
        code = line.split("#", 1)[0].strip()
        if not code.startswith("export "):
            lines.append(line)
            continue
        assignments = []
        for assignment in code.removeprefix("export ").split():
            name, _, value = assignment.partition("=")
            if name in stand_ins:
                value = shlex.quote(stand_ins[name])
            assert value != "...", f"no stand-in for {name} of docs/operations.md"
            assignments.append(f"{name}={value}")
        lines.append("export " + " ".join(assignments))
    return "\n".join(lines)


@dataclass
class Deployment:
    tmp: Path
    stand_ins: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def prelude(self) -> str:
        return localised(sh_blocks()[0].body, self.stand_ins)

    def run(self, script: str, *, timeout: float = 180, returncode: int = 0) -> subprocess.CompletedProcess:
        """Run `script` (localised) after the environment block, as a documented shell session would."""
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", f"{self.prelude}\n{localised(script, self.stand_ins)}"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == returncode, (
            f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )
        return done

    def environment_after(self, script: str) -> dict[str, str]:
        """The environment `script` leaves behind (after the environment block)."""
        output = self.run(f"{script}\nenv -0").stdout
        return dict(item.split("=", 1) for item in output.split("\0") if "=" in item)

    def sql(self, query: str, params=(), *, database: str | None = None, user: str = "postgres"):
        with psycopg.connect(**{**PG, "user": user}, dbname=database or self.stand_ins["DB"]) as conn:
            return conn.execute(query, params).fetchall()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, mlflow_server):
    """One database of the documented layout: the owner role made by a superuser, the
    application role made by the owner, the schema migrated as the owner."""
    tmp = tmp_path_factory.mktemp("deployment")
    suffix = secrets.token_hex(4)
    stand_ins = {
        "PGHOST": PG["host"],
        "PGPORT": str(PG["port"]),
        "DB": f"ops_doc_{suffix}",
        "DB_OWNER": f"ops_doc_owner_{suffix}",
        "DB_APP": f"ops_doc_app_{suffix}",
        "RESTORED": f"ops_doc_restored_{suffix}",
        "OWNER_PASSWORD": secrets.token_hex(12),
        "APP_DB_PASSWORD": secrets.token_hex(12),
        "BACKUP_DIR": str(tmp / "backups"),
        "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp / 'broker.sqlite3'}",
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "MLFLOW_TRACKING_TOKEN": "not-checked-by-the-test-server",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "AUDIT_SIGNING_KEY": secrets.token_urlsafe(40),
        "WEB_BIND": f"127.0.0.1:{free_port()}",
        "WEB_CONCURRENCY": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
    }
    (tmp / "backups").mkdir()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        # gunicorn itself trusts X-Forwarded-Proto from loopback; the proxy sits on another
        # machine, where only the settings' SECURE_PROXY_SSL_HEADER reads it.
        "FORWARDED_ALLOW_IPS": "192.0.2.1",
    }
    deployment = Deployment(tmp, stand_ins, env)
    try:
        deployment.run(
            blocks_of("test_the_owner_migrates_and_the_application_role_cannot_rewrite_the_log")[0]
        )
        yield deployment
    finally:
        with psycopg.connect(**PG, dbname="postgres", autocommit=True) as conn:
            # Every database the test's owner role owns, whatever name a documented command gave it.
            owned = conn.execute(
                "SELECT datname FROM pg_database JOIN pg_roles ON datdba = pg_roles.oid WHERE rolname = %s",
                (stand_ins["DB_OWNER"],),
            ).fetchall()
            for (name,) in owned:
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            for name in ("DB_APP", "DB_OWNER"):
                conn.execute(f'DROP ROLE IF EXISTS "{stand_ins[name]}"')


def test_every_command_of_the_deployment_section_names_the_test_that_runs_it():
    blocks = sh_blocks()
    # Every opening fence is a block read here: none escapes the markers by its indentation.
    assert len(blocks) == deployment_section().count("```sh\n") >= 6
    tests = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
    for block in blocks:
        assert block.test is not None, f"a sh block without a 'run by' marker:\n{block.body}"
        assert block.test in tests, f"the marker names {block.test}, which is not a test here"


def test_the_proxy_example_sets_the_header_the_settings_read():
    section = deployment_section()
    proxy = re.search(r"```nginx\n(.*?)```", section, re.S).group(1)
    header, value = settings.SECURE_PROXY_SSL_HEADER
    assert (header, value) == ("HTTP_X_FORWARDED_PROTO", "https")
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in proxy
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in proxy
    assert "TRUSTED_PROXY_COUNT=1" in sh_blocks()[0].body


def table_privileges(deployment: Deployment, table: str, *, database: str | None = None) -> set[str]:
    rows = deployment.sql(
        "SELECT privilege_type FROM information_schema.role_table_grants"
        " WHERE grantee = %s AND table_name = %s",
        (deployment.stand_ins["DB_APP"], table),
        database=database,
    )
    return {row[0] for row in rows}


def assert_the_application_role_cannot_rewrite_the_log(deployment: Deployment, database: str) -> None:
    app = deployment.stand_ins["DB_APP"]
    with psycopg.connect(**{**PG, "user": app}, dbname=database, autocommit=True) as conn:
        for statement in (
            f"UPDATE {AUDIT_TABLE} SET meaning = 'edited'",
            f"DELETE FROM {AUDIT_TABLE}",
            f"TRUNCATE {AUDIT_TABLE}",
            f"ALTER TABLE {AUDIT_TABLE} DISABLE TRIGGER audit_no_change",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert table_privileges(deployment, AUDIT_TABLE, database=database) == {"SELECT", "INSERT"}
    owners = deployment.sql(
        "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'", database=database
    )
    assert owners == [(deployment.stand_ins["DB_OWNER"],)]


def audit_triggers(deployment: Deployment, database: str) -> set[str]:
    rows = deployment.sql(
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = %s::regclass",
        (AUDIT_TABLE,),
        database=database,
    )
    return {row[0] for row in rows}


def test_the_owner_migrates_and_the_application_role_cannot_rewrite_the_log(deployment):
    # The fixture ran the roles block.
    database = deployment.stand_ins["DB"]
    assert_the_application_role_cannot_rewrite_the_log(deployment, database)
    assert {"audit_no_change", "audit_no_truncate"} <= audit_triggers(deployment, database)
    roles = deployment.sql(
        "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = %s",
        (deployment.stand_ins["DB_APP"],),
    )
    assert roles == [(False, False, False)]


def started(deployment: Deployment, env: dict[str, str], command: str, name: str):
    log_path = deployment.tmp / f"{name}.log"
    process = start_process(["bash", "-c", f"exec {command}"], log_path=log_path, env=env)
    return process, log_path


def is_server(line: str) -> bool:
    return bool(re.search(r"/(gunicorn|celery) .*\b(wsgi|worker|beat)\b", line))


@pytest.mark.worker
def test_web_workers_and_beat_start_as_documented(deployment):
    (block,) = blocks_of("test_web_workers_and_beat_start_as_documented")
    lines = [line for line in block.splitlines() if line.split("#", 1)[0].strip()]
    servers = [line for line in lines if is_server(line)]
    env = deployment.environment_after("\n".join(line for line in lines if not is_server(line)))
    web, worker, apply_worker, beat = servers
    assert "gunicorn -c gunicorn.conf.py config.wsgi" in web and "-Q apply" in apply_worker
    processes = {}
    try:
        for name, command in (("web", web), ("apply-worker", apply_worker), ("beat", beat)):
            processes[name] = started(deployment, env, command, name)

        # gunicorn, over plain HTTP as the proxy forwards it, the Host the proxy passes on.
        base = f"http://{deployment.stand_ins['WEB_BIND']}"
        host = env["ALLOWED_HOSTS"]
        behind_proxy = {"Host": host, "X-Forwarded-Proto": "https"}
        process, log_path = processes["web"]
        wait_for_process(
            process,
            lambda: answers_with(f"{base}/healthz", behind_proxy),
            what="gunicorn",
            log_path=log_path,
        )
        health = requests.get(f"{base}/healthz", headers=behind_proxy, timeout=5)
        assert (health.status_code, health.json()) == (200, {"status": "ok"}), health.text
        page = requests.get(f"{base}/accounts/login/", headers=behind_proxy, timeout=5, allow_redirects=False)
        assert page.status_code == 200
        # Without the proxy's header the request is not secure: sent to HTTPS.
        plain = requests.get(
            f"{base}/accounts/login/", headers={"Host": host}, timeout=5, allow_redirects=False
        )
        assert plain.status_code == 301
        assert plain.headers["Location"] == f"https://{host}/accounts/login/"

        # Each worker applies a task: the `-Q apply` one from `apply` while it consumes alone,
        # then the one without -Q from `notify`, which only it consumes.
        heartbeat_applied(deployment, env, processes["apply-worker"], marker="ops-doc-apply", queue="apply")
        processes["worker"] = started(deployment, env, worker, "worker")
        heartbeat_applied(deployment, env, processes["worker"], marker="ops-doc-all", queue="notify")

        process, log_path = processes["beat"]
        wait_for_process(
            process, lambda: "beat: Starting" in log_path.read_text(), what="beat", log_path=log_path
        )
    finally:
        for process, _log in processes.values():
            stop_process_group(process)
    # Each stopped by itself on SIGTERM, as a supervisor stops it.
    for name, (process, log_path) in processes.items():
        assert process.returncode in (0, -15), (name, process.returncode, log_path.read_text()[-2000:])


def heartbeat_applied(
    deployment: Deployment, env: dict[str, str], started_process, *, marker: str, queue: str
):
    """Publish beat's heartbeat task to `queue` on the documented broker; wait for its row."""
    process, log_path = started_process
    with celery_app.connection_for_write(env["CELERY_BROKER_URL"]) as connection:
        celery_app.send_task("promotions.record_heartbeat", args=[marker], queue=queue, connection=connection)
    wait_for_process(
        process,
        lambda: deployment.sql("SELECT 1 FROM promotions_workerheartbeat WHERE marker = %s", (marker,)),
        what=f"a worker applying the task sent to {queue}",
        log_path=log_path,
    )


def answers_with(url: str, headers: dict[str, str]) -> bool:
    try:
        return requests.get(url, headers=headers, timeout=2).status_code in (200, 503)
    except requests.RequestException:
        return False


def record_entries(count: int) -> str:
    """A command appending `count` audit entries as the application role, through the audit service."""
    code = (
        "from promotions import audit\n"
        f"for _ in range({count}):\n"
        "    audit.record(action='registry.drift', meaning='An entry of the operations test')"
    )
    return f".venv/bin/python manage.py shell -c {shlex.quote(code)}"


def chain_head(deployment: Deployment, database: str) -> tuple[int, str]:
    return tuple(
        deployment.sql("SELECT last_sequence, last_hash FROM promotions_auditchainhead", database=database)[0]
    )


def test_a_restored_backup_verifies_up_to_its_head_and_the_export_shows_the_gap(deployment):
    backup, export, restore, compare = blocks_of(
        "test_a_restored_backup_verifies_up_to_its_head_and_the_export_shows_the_gap"
    )
    live, restored = deployment.stand_ins["DB"], deployment.stand_ins["RESTORED"]
    deployment.run(record_entries(3))
    deployment.run(backup)
    backed_up = chain_head(deployment, live)

    # After the backup the log moves on, and a copy of it is kept outside the database.
    deployment.run(record_entries(2))
    deployment.run(export)
    exported = chain_head(deployment, live)
    (export_file,) = Path(deployment.stand_ins["BACKUP_DIR"]).glob("audit-*.jsonl")
    manifest = json.loads(Path(f"{export_file}.manifest.json").read_text())
    lost = manifest["database_head"]["sequence"]
    assert backed_up[0] < lost <= exported[0]
    assert "signature" in manifest

    output = deployment.run(restore).stdout
    # The restored log verifies, up to the backup's head, signed.
    assert f"Audit log verified: {backed_up[0]} entries, head {backed_up[1]}" in output
    assert "the chain head's MAC checks" in output
    # The later export names the entries the restored database lost, and they are its rows.
    env_restored = "\n".join(line for line in restore.splitlines() if line.startswith("export "))
    compared = deployment.run(f"{env_restored}\n{compare}", returncode=1)
    assert (
        f"Audit log broken at entry #{backed_up[0] + 1}: the database ends at entry #{backed_up[0]}, "
        f"but it held entries up to #{lost} when this export was cut: entries #{backed_up[0] + 1} "
        f"to #{lost} are missing from the database"
    ) in compared.stderr
    rows = [json.loads(line) for line in export_file.read_text().splitlines()]
    assert [row["sequence"] for row in rows if row["sequence"] > backed_up[0]] == list(
        range(backed_up[0] + 1, lost + 1)
    )
    assert chain_head(deployment, restored) == backed_up

    # The triggers and the application role's grants came back with the restore.
    assert audit_triggers(deployment, restored) == audit_triggers(deployment, live)
    assert table_privileges(deployment, AUDIT_TABLE, database=restored) == {"SELECT", "INSERT"}
    assert_the_application_role_cannot_rewrite_the_log(deployment, restored)

    # The restored log goes on from the backup's head; once it reaches the export's head, the
    # export names that entry as differing.
    deployment.run(f"{env_restored}\n{record_entries(lost - backed_up[0])}")
    done = deployment.run(
        f"{env_restored}\n"
        f".venv/bin/python manage.py verify_audit_log --export {shlex.quote(str(export_file))}",
        returncode=1,
    )
    assert f"Audit log broken at entry #{lost}: the database's entry #{lost} has hash" in done.stderr


def test_an_upgrade_migrates_as_the_owner_and_keeps_the_grants(deployment):
    (upgrade,) = blocks_of("test_an_upgrade_migrates_as_the_owner_and_keeps_the_grants")
    owner = deployment.stand_ins["DB_OWNER"]
    # A table the application role has no grant on yet, as after a release that adds one.
    with psycopg.connect(**{**PG, "user": owner}, dbname=deployment.stand_ins["DB"], autocommit=True) as conn:
        conn.execute(f'REVOKE ALL ON promotions_stage FROM "{deployment.stand_ins["DB_APP"]}"')
    assert table_privileges(deployment, "promotions_stage") == set()
    output = deployment.run(upgrade).stdout
    assert "No planned migration operations." in output
    assert f"Granted the application role {deployment.stand_ins['DB_APP']} its privileges." in output
    assert table_privileges(deployment, "promotions_stage") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert table_privileges(deployment, AUDIT_TABLE) == {"SELECT", "INSERT"}
    assert_the_application_role_cannot_rewrite_the_log(deployment, deployment.stand_ins["DB"])
