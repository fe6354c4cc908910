"""LOG_FORMAT=json: one JSON object per line from web, worker and beat, each with the request id, the
task and the promotion request it is about, and no secret in any field."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess

import pytest
import requests
from celery.signals import after_task_publish
from django.conf import settings
from django.test import Client
from django.utils.module_loading import import_string

from bench.common import BIN, ROOT, free_port, start_process, stop_process_group, wait_for_http, wait_until
from promotions import services, tokens
from promotions.models import PromotionRequest
from promotions.services.lifecycle import APPLY_TASK
from promotions.task_context import REQUEST_ID_HEADER
from registry_sync.models import SyncRun
from registry_sync.services import sync_registry
from tests.apply_helpers import registry_with_production
from tests.conftest import PYTHON, subprocess_env
from tests.factories import mirror_model, stage, version
from tests.test_settings import run_check

Status = PromotionRequest.Status
FIELDS = {
    "timestamp",
    "level",
    "logger",
    "message",
    "request_id",
    "task_id",
    "task_name",
    "promotion_request_id",
}


class JsonLines:
    def __init__(self, stream: io.StringIO):
        self.stream = stream

    def all(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def of(self, logger: str) -> list[dict]:
        return [line for line in self.all() if line["logger"] == logger]


@pytest.fixture
def pending(requester):
    """A pending request for a version in the mirror: no MLflow server needed."""
    model = mirror_model(
        "log_forecast", {1: {"current_stage": "Production"}, 2: {"current_stage": "Staging"}}
    )
    return services.promotion_request_create(
        version=version(model, 2), stage=stage("Production"), requested_by=requester, justification="retrain"
    )


@pytest.fixture
def json_log():
    """The console handler as LOGGING builds it with LOG_FORMAT=json, writing to a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(import_string(settings.LOGGING["formatters"]["json"]["()"])())
    for name in settings.LOGGING["handlers"]["console"]["filters"]:
        handler.addFilter(import_string(settings.LOGGING["filters"][name]["()"])())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield JsonLines(stream)
    finally:
        root.removeHandler(handler)


@pytest.fixture
def published():
    """The headers of every task published while the test runs, as they went to the broker."""
    sent = []

    def record(sender=None, headers=None, **kwargs):
        sent.append((sender, dict(headers or {})))

    after_task_publish.connect(record, weak=False)
    yield sent
    after_task_publish.disconnect(record)


def test_a_web_request_logs_json_lines_with_its_request_id(client, reviewer, pending, json_log):
    client.force_login(reviewer)
    response = client.get(f"/requests/{pending.pk}/", HTTP_X_REQUEST_ID="edge-4f2a9c")

    assert response.status_code == 200
    assert response["X-Request-ID"] == "edge-4f2a9c"
    [access] = json_log.of("promotions.access")
    assert FIELDS <= access.keys()
    assert access["request_id"] == "edge-4f2a9c"
    assert access["promotion_request_id"] == pending.pk
    assert access["message"] == f"GET /requests/{pending.pk}/ 200"
    assert access["status_code"] == 200
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", access["timestamp"])


def test_an_error_page_is_logged_once_with_the_request_it_was_about(client, reviewer, json_log):
    client.force_login(reviewer)
    response = client.get("/requests/987654/", HTTP_X_REQUEST_ID="edge-missing")

    assert response.status_code == 404
    [warning] = json_log.of("django.request")
    assert warning["level"] == "WARNING" and warning["status_code"] == 404
    assert warning["request_id"] == "edge-missing"
    assert warning["promotion_request_id"] == 987654


def test_an_api_call_is_logged_with_its_request_and_never_its_token(reviewer, json_log):
    _, raw = tokens.api_token_create(user=reviewer, name="ci")
    client = Client(headers={"Authorization": f"Bearer {raw}", "X-Request-ID": "edge-api"})
    response = client.get("/api/requests/987654")

    assert response.status_code == 404
    [access] = json_log.of("promotions.access")
    assert access["request_id"] == "edge-api" and access["promotion_request_id"] == 987654
    assert raw not in json.dumps(json_log.all())


@pytest.mark.parametrize(
    "hostile",
    ["two words", "x" * 65, "id\r\nX-Injected: 1", '"}{"level": "CRITICAL', "-leading-dash", "ünïcode"],
)
def test_a_hostile_request_id_is_replaced(client, reviewer, json_log, hostile):
    client.force_login(reviewer)
    response = client.get("/", HTTP_X_REQUEST_ID=hostile)

    request_id = response["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert [line["request_id"] for line in json_log.of("promotions.access")] == [request_id]


def test_each_request_gets_its_own_id_and_leaves_none_behind(client, reviewer, json_log):
    client.force_login(reviewer)
    first = client.get("/")["X-Request-ID"]
    second = client.get("/")["X-Request-ID"]
    logging.getLogger("promotions.test").info("after the requests")

    assert first != second
    ids = [
        line["request_id"]
        for line in json_log.all()
        if line["logger"] in ("promotions.access", "promotions.test")
    ]
    assert ids == [first, second, None]


@pytest.mark.django_db(transaction=True)  # the apply is published when the approval commits
def test_a_task_published_during_the_request_carries_its_id(client, reviewer, reviewer2, pending, published):
    services.review_approve(request=pending, reviewer=reviewer2)
    client.force_login(reviewer)
    response = client.post(
        f"/requests/{pending.pk}/decide/",
        {"decision": "approve", "evidence_sha256": pending.evidence_sha256},
        HTTP_X_REQUEST_ID="edge-approval-1",
    )

    assert response.status_code == 302
    applies = [headers for name, headers in published if name == APPLY_TASK]
    assert [headers.get(REQUEST_ID_HEADER) for headers in applies] == ["edge-approval-1"]


def test_a_task_published_outside_a_request_carries_no_id(pending, published):
    services.enqueue_apply(pending.pk)

    assert published and all(REQUEST_ID_HEADER not in headers for _, headers in published)


def test_secrets_are_redacted_in_every_field(json_log, settings):
    settings.MLFLOW_WEBHOOK_SECRET = "whsec-0123456789"
    logger = logging.getLogger("promotions.test")
    try:
        raise ConnectionError("refused by https://svc:hunter2-pw@mlflow.internal/api")
    except ConnectionError:
        logger.exception(
            "MLflow at %s said no (secret %s)",
            "https://svc:hunter2-pw@mlflow.internal/",
            "whsec-0123456789",
            extra={
                "endpoint": "https://svc:hunter2-pw@mlflow.internal/",
                "headers": {"Authorization": "Bearer abcdefgh123"},
            },
        )

    [line] = json_log.of("promotions.test")
    text = json.dumps(line)
    assert "hunter2-pw" not in text and "whsec-0123456789" not in text and "abcdefgh123" not in text
    assert line["message"] == "MLflow at https://***@mlflow.internal/ said no (secret ***)"
    assert line["endpoint"] == "https://***@mlflow.internal/"
    assert "ConnectionError: refused by https://***@mlflow.internal/api" in line["exc_info"]


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "DEBUG": "true", "HOME": "/tmp"}
    return subprocess.run(
        [PYTHON, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_log_format_json_writes_one_json_object_per_line():
    result = _run_python(
        "import logging; logging.getLogger('promotions.test').warning('with %s', 'Bearer s3cr3t-t0ken')",
        LOG_FORMAT="json",
    )

    assert result.returncode == 0, result.stderr
    [line] = [json.loads(text) for text in result.stderr.splitlines()]
    assert line["level"] == "WARNING" and line["logger"] == "promotions.test"
    assert line["message"] == "with Bearer ***"


def test_beat_logs_json(tmp_path):
    log_path = tmp_path / "beat.log"
    env = subprocess_env(LOG_FORMAT="json")
    beat = start_process(
        [
            str(BIN / "celery"),
            "-A",
            "config",
            "--quiet",
            "beat",
            "--loglevel",
            "INFO",
            "-s",
            str(tmp_path / "schedule"),
        ],
        log_path=log_path,
        env=env,
    )
    try:
        wait_until(lambda: "beat: Starting" in log_path.read_text(), timeout=60, message="beat's start")
    finally:
        stop_process_group(beat)

    lines = [json.loads(text) for text in log_path.read_text().splitlines() if text.strip()]
    assert any(line["logger"] == "celery.beat" and line["message"] == "beat: Starting..." for line in lines)


def test_the_web_under_gunicorn_writes_json_only(tmp_path):
    port = free_port()
    log_path = tmp_path / "web.log"
    command = [str(BIN / "gunicorn"), "config.wsgi", "--bind", f"127.0.0.1:{port}", "--access-logfile", "-"]
    web = start_process(command, log_path=log_path, env=subprocess_env(LOG_FORMAT="json"))
    try:
        wait_for_http(f"http://127.0.0.1:{port}/accounts/login/", web, log_path=log_path)
        answer = requests.get(
            f"http://127.0.0.1:{port}/accounts/login/", headers={"X-Request-ID": "lb-77"}, timeout=5
        )
        wait_until(lambda: "lb-77" in log_path.read_text(), timeout=10, message="the access line")
    finally:
        stop_process_group(web)

    assert answer.headers["X-Request-ID"] == "lb-77"
    lines = [json.loads(text) for text in log_path.read_text().splitlines() if text.strip()]
    assert any(line["logger"] == "gunicorn.error" and "Booting worker" in line["message"] for line in lines)
    [access] = [line for line in lines if line["request_id"] == "lb-77"]
    assert access["logger"] == "promotions.access" and access["status_code"] == 200


def test_an_unknown_log_format_refuses_to_start():
    result = run_check(LOG_FORMAT="bogus")

    assert result.returncode == 2
    assert "LOG_FORMAT='bogus' is not one of: plain, json" in result.stderr


def test_the_worker_logs_json_with_the_web_request_id_and_the_promotion_request(
    client, registry, model_name, requester, reviewer, reviewer2, worker_factory
):
    registry_with_production(registry.client(), model_name)
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    request = services.promotion_request_create(
        version=services.version_get(model_name=model_name, version=2, refresh=False),
        stage=stage("Production"),
        requested_by=requester,
        justification="tests pass",
    )
    services.review_approve(request=request, reviewer=reviewer2)
    worker = worker_factory(LOG_FORMAT="json")
    client.force_login(reviewer)
    client.post(
        f"/requests/{request.pk}/decide/",
        {"decision": "approve", "evidence_sha256": request.evidence_sha256},
        HTTP_X_REQUEST_ID="edge-apply-7",
    )

    def applied():
        request.refresh_from_db()
        return request.status == Status.APPLIED

    wait_until(applied, timeout=90, message=f"applied (is {request.status})\n{worker.log()[-3000:]}")

    def apply_task_lines():
        lines = [json.loads(text) for text in worker.log().splitlines() if text.startswith("{")]
        ours = [line for line in lines if line["task_name"] == APPLY_TASK]
        # Celery's "succeeded" line is the apply's last, written after the request is applied.
        return ours if any("succeeded" in line["message"] for line in ours) else None

    apply_lines = wait_until(apply_task_lines, timeout=30, message=worker.log()[-3000:])
    assert {line["request_id"] for line in apply_lines} == {"edge-apply-7"}
    assert {line["promotion_request_id"] for line in apply_lines} == {request.pk}
    assert all(line["task_id"] for line in apply_lines)
    # Past Celery's start-up warnings (printed before its logging is set up): JSON only.
    started = worker.log().index('{"timestamp"')
    assert all(text.startswith("{") for text in worker.log()[started:].splitlines() if text.strip())
