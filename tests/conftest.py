"""Real parts for the suite: an MLflow server, the configured database and broker, and a
Celery worker process. Each is started once per session, on a free loopback port."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.test import TransactionTestCase

from bench.common import (
    free_port,
    kill_process_group,
    start_celery_worker,
    stop_process_group,
)
from bench.common import mlflow_server as running_mlflow_server
from config.celery import app as celery_app
from promotions import database_roles, roles
from promotions.audit import triggers as audit_triggers
from tests.oidc_provider import oidc, sso  # noqa: F401 - the sign-in tests' provider fixtures

PYTHON = sys.executable

TEST_BROKER_URL = settings.CELERY_BROKER_URL
# Personas are created in almost every test; a slow password hash is no part of what we test.
settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- the audit table's triggers vs. Django's flush ------------------------------------------
# TransactionTestCase empties every table after each test; the append-only triggers rightly
# refuse that, so they are lifted for the flush alone and put back at once.
_original_teardown = TransactionTestCase._fixture_teardown


def _teardown_with_triggers_lifted(self):
    from django.db import connection

    # Where the suite runs as the restricted application role, only the owner may lift them.
    with database_roles.connected_as_owner(connection):
        audit_triggers.remove(connection)
        try:
            _original_teardown(self)
        finally:
            audit_triggers.install(connection)
            _restore_chain_head(connection)
            # Here, not in the next test: that may be inside its transaction, where the owner
            # role (whose triggers the migration's catalog code re-installs) cannot step in.
            _restore_catalog()


def _restore_chain_head(connection):
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM promotions_auditchainhead")
        if cursor.fetchone()[0] == 0:
            cursor.execute(
                "INSERT INTO promotions_auditchainhead (id, last_sequence, last_hash) VALUES (1, 0, %s)",
                ["0" * 64],
            )


TransactionTestCase._fixture_teardown = _teardown_with_triggers_lifted


# --- the two PostgreSQL roles (DATABASE_OWNER_URL) -------------------------------------------
# As in production, the owner creates the test database and migrates it (the migrate command
# grants the application role its privileges); the tests then run as the application role, and
# the owner drops the database at the end.


_owner_connection = ExitStack()  # the owner role's turns at the test database's connection


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    from django.db import connection

    _owner_connection.enter_context(database_roles.connected_as_owner(connection))


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    from django.db import connection

    _owner_connection.close()  # the database exists and is migrated: the application role now
    yield
    # pytest-django's own django_db_setup drops the test database after this: as the owner.
    _owner_connection.enter_context(database_roles.connected_as_owner(connection))


@pytest.fixture(autouse=True)
def _fresh_cache():
    """/healthz keeps its checks for a few seconds; each test sees the parts as it set them."""
    cache.clear()


@pytest.fixture(autouse=True)
def _catalog_exists(request):
    """A transactional test's flush empties the chain head, the roles and the default
    catalog that migrations created; put them back for whichever test comes next."""
    marker = request.node.get_closest_marker("django_db")
    names = request.fixturenames
    transactional = "transactional_db" in names or "live_server" in names
    transactional = transactional or bool(marker and marker.kwargs.get("transaction"))
    if transactional:
        request.getfixturevalue("transactional_db")
    elif marker or "db" in names:
        request.getfixturevalue("db")
    else:
        yield
        return
    from django.db import connection

    _restore_chain_head(connection)
    _restore_catalog()
    yield


def _restore_catalog():
    from promotions.models import Stage

    if Stage.objects.exists():
        return
    for name in roles.ALL_ROLES:
        Group.objects.get_or_create(name=name)
    from importlib import import_module

    migration = import_module("promotions.migrations.0002_roles_stages_audit_triggers")
    from django.apps import apps
    from django.db import connection

    class _Editor:
        pass

    editor = _Editor()
    editor.connection = connection
    migration.forwards(apps, editor)


# --- MLflow -----------------------------------------------------------------------------------


class MlflowServer:
    def __init__(self, url: str, workdir: Path):
        self.url = url
        self.workdir = workdir

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url, registry_uri=self.url)


# MLflow delivers its webhooks to the live test server only when told loopback http is fine; it
# keeps webhook secrets encrypted with one key all its workers must share (without it each
# worker makes up its own and cannot read what another stored); it caches the webhooks of an
# event for a minute by default, which would hide a webhook a test has just registered.
MLFLOW_TEST_SERVER_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
}


@contextmanager
def _environment(values: dict[str, str]):
    """Set `values` in os.environ while a child process is started, then put it back."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow server (SQLite store) on a free loopback port, shared by the whole run."""
    workdir = tmp_path_factory.mktemp("mlflow")
    with ExitStack() as stack:
        with _environment(MLFLOW_TEST_SERVER_ENV):
            url = stack.enter_context(running_mlflow_server(workdir))
        server = MlflowServer(url, workdir)
        previous = settings.MLFLOW_TRACKING_URI
        settings.MLFLOW_TRACKING_URI = url
        os.environ["MLFLOW_TRACKING_URI"] = url
        yield server
        settings.MLFLOW_TRACKING_URI = previous


@contextmanager
def private_mlflow_server(workdir: Path):
    """An MLflow server of one module's own, pointed at for as long as it runs: for tests whose
    subject is the whole registry (a sync of everything, seeding), which the session's shared
    server fills with every other test's models."""
    previous_setting, previous_env = settings.MLFLOW_TRACKING_URI, os.environ.get("MLFLOW_TRACKING_URI")
    with running_mlflow_server(workdir) as url:
        settings.MLFLOW_TRACKING_URI = url
        os.environ["MLFLOW_TRACKING_URI"] = url
        try:
            yield MlflowServer(url, workdir)
        finally:
            settings.MLFLOW_TRACKING_URI = previous_setting
            if previous_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous_env


@pytest.fixture
def registry(mlflow_server, settings):
    """Point the product at the test MLflow server for one test."""
    settings.MLFLOW_TRACKING_URI = mlflow_server.url
    return mlflow_server


@pytest.fixture
def model_name():
    """A registered-model name no other test uses: tests share one MLflow server."""
    return f"model_{uuid.uuid4().hex[:10]}"


# --- Celery worker ----------------------------------------------------------------------------


def database_url_for_subprocess() -> str:
    from django.db import connection

    conf = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{conf['NAME']}"
    auth = quote(conf["USER"] or "")
    if conf.get("PASSWORD"):
        auth += ":" + quote(conf["PASSWORD"])
    host = conf.get("HOST") or "127.0.0.1"
    port = conf.get("PORT") or 5432
    return f"postgres://{auth}@{host}:{port}/{conf['NAME']}"


def subprocess_env(**extra) -> dict[str, str]:
    env = {
        **os.environ,
        "DEBUG": "true",
        "DATABASE_URL": database_url_for_subprocess(),
        "CELERY_BROKER_URL": TEST_BROKER_URL,
        "MLFLOW_TRACKING_URI": settings.MLFLOW_TRACKING_URI,
        "PYTHONUNBUFFERED": "1",
    }
    # Workers and commands are the application: its role only (the owner URL names another database).
    env.pop("DATABASE_OWNER_URL", None)
    env.update(extra)
    return env


class Worker:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.process: subprocess.Popen | None = None
        self.log_path = tmp / "worker.log"

    def start(self, *, concurrency: int = 2, options: tuple[str, ...] = (), **env) -> None:
        self.process = start_celery_worker(
            "config",
            log_path=self.log_path,
            env=subprocess_env(**env),
            concurrency=concurrency,
            name="test",
            options=("--loglevel", "INFO", *options),
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)

    def kill(self) -> None:
        if self.process is not None:
            kill_process_group(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def purge_broker() -> None:
    with celery_app.connection_for_write() as conn:
        for name in settings.TASK_QUEUE_NAMES:
            try:
                conn.default_channel.queue_purge(name)
            except Exception:  # noqa: BLE001 - a queue nobody declared yet has nothing in it
                pass


WORKER_ENV = {
    # Fault tests want the bounds reached in seconds, not minutes.
    "PROMOTION_MAX_ATTEMPTS": "3",
    "PROMOTION_RETRY_BASE_SECONDS": "1",
    "PROMOTION_RETRY_CAP_SECONDS": "2",
    "PROMOTION_STUCK_AFTER_SECONDS": "3",
    "PROMOTION_LEASE_SECONDS": "3",
}


@pytest.fixture
def worker_factory(mlflow_server, transactional_db, tmp_path):
    """Start real worker processes on the configured broker, writing the test database."""
    try:
        purge_broker()
    except Exception:  # noqa: BLE001 - an empty or new queue cannot be purged on every transport
        pass
    workers = []

    def start(*, options: tuple[str, ...] = (), **env):
        worker = Worker(tmp_path)
        worker.start(options=options, **{**WORKER_ENV, **env})
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def celery_worker(worker_factory):
    return worker_factory()


# --- personas ---------------------------------------------------------------------------------


def make_user(username: str, *role_names: str, **fields) -> User:
    user = User.objects.create_user(
        username=username,
        password="pw-" + username,
        first_name=fields.pop("first_name", username.title()),
        last_name=fields.pop("last_name", "Tester"),
        **fields,
    )
    for role in role_names:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def requester(db):
    return make_user("riley", roles.REQUESTERS)


@pytest.fixture
def reviewer(db):
    return make_user("rex", roles.REVIEWERS)


@pytest.fixture
def reviewer2(db):
    return make_user("rita", roles.REVIEWERS)


@pytest.fixture
def stage_admin(db):
    return make_user("sam", roles.STAGE_ADMINS, is_staff=True)


@pytest.fixture
def auditor(db):
    return make_user("alice", roles.AUDITORS)


@pytest.fixture
def outsider(db):
    return make_user("olga")


@pytest.fixture
def mlflow_proxy(registry, settings):
    """The product talks to MLflow through the proxy; tests' own clients talk to MLflow."""
    from tests.mlflow_proxy import MlflowProxy

    proxy = MlflowProxy(registry.url)
    settings.MLFLOW_TRACKING_URI = proxy.url
    yield proxy
    proxy.close()


class broker_unreachable:  # noqa: N801 - used as a context manager
    """Point the publishing side at a closed port (or at `url`), then restore the real broker."""

    def __init__(self, url: str | None = None):
        self.url = url

    def __enter__(self):
        self.saved = celery_app.conf.broker_write_url
        self._reset(self.url or f"redis://127.0.0.1:{free_port()}/0")
        return self

    def __exit__(self, *exc):
        self._reset(self.saved)

    @staticmethod
    def _reset(url):
        # Publishing reads broker_write_url and caches its pools; drop them so the next
        # publish connects to `url`.
        celery_app._pool = None
        celery_app.amqp._producer_pool = None
        celery_app.conf.broker_write_url = url


WORKER_FIXTURES = {"worker_factory", "celery_worker"}


def pytest_collection_modifyitems(config, items):
    """A test that runs a real worker is a `worker` test, whichever file it is in: CI's broker
    pass (RabbitMQ) selects them with `-m worker`."""
    for item in items:
        if WORKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.worker)
