"""The CI pipeline case end to end: the JSON API, a real Celery worker, the real MLflow server,
outbound webhooks to a local receiver and e-mail written by the worker."""

import json
import time
from email import message_from_bytes, policy

import pytest
from django.test import Client

from bench.common import wait_until
from promotions import tokens
from promotions.models import (
    AuditEvent,
    OutboundDelivery,
    PromotionRequest,
    Stage,
    WebhookEndpoint,
)
from registry_sync.webhooks import sign
from tests.registry_helpers import make_version
from tests.webhook_receiver import Receiver

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
Status = PromotionRequest.Status
SECRET = "pipeline-secret-for-tests"


def api(user) -> Client:
    _, raw = tokens.api_token_create(user=user, name="ci")
    return Client(headers={"Authorization": f"Bearer {raw}"})


def post(client, path, body=None):
    return client.post(path, data=json.dumps(body or {}), content_type="application/json")


def wait_for(request_id, status, worker, timeout=90):
    def reached():
        return PromotionRequest.objects.get(pk=request_id).status == status

    wait_until(reached, timeout=timeout, message=f"request #{request_id} {status}\n{worker.log()[-3000:]}")


@pytest.fixture
def gated_staging():
    staging = Stage.objects.get(name="Staging")
    staging.required_approvals = 0
    staging.checks = "evidence tests_passed == true\nmetric accuracy >= 0.8"
    staging.save()
    return staging


AFTER_APPROVAL = ("approved", "applying", "applied")


def test_ci_promotes_to_staging_automatically_and_production_waits_for_two_reviewers(
    registry, model_name, requester, reviewer, reviewer2, gated_staging, celery_worker
):
    client = registry.client()
    make_version(client, model_name, metrics={"accuracy": 0.91})
    make_version(client, model_name, metrics={"accuracy": 0.93})
    ci = api(requester)

    # Failing tests: refused at once, the failing check named, nothing filed.
    refused = post(
        ci,
        "/api/requests",
        {
            "model_name": model_name,
            "version": 2,
            "stage": "Staging",
            "justification": "CI #41",
            "evidence": {"tests_passed": False},
        },
    )
    assert refused.status_code == 422
    assert refused.json()["code"] == "checks_failed"
    assert "Failing: evidence tests_passed == true (is false)" in refused.json()["message"]
    assert not PromotionRequest.objects.exists()

    # Passing tests: approved without a human and applied by the worker.
    filed = post(
        ci,
        "/api/requests",
        {
            "model_name": model_name,
            "version": 1,
            "stage": "Staging",
            "justification": "CI #42",
            "evidence": {"tests_passed": True, "ci_run": "https://ci.example/42"},
        },
    )
    assert filed.status_code == 201, filed.content
    # approved without a human; the worker may already have taken it when the answer is built
    assert filed.json()["status"] in AFTER_APPROVAL
    staging_id = filed.json()["id"]
    wait_for(staging_id, Status.APPLIED, celery_worker)
    assert ci.get(f"/api/requests/{staging_id}").json()["status"] == "applied"
    assert client.get_model_version(model_name, "1").current_stage == "Staging"

    # Production: pending until two reviewers approve through the API, then applied.
    production = post(
        ci,
        "/api/requests",
        {"model_name": model_name, "version": 1, "stage": "Production", "justification": "CI #42, canary ok"},
    )
    assert production.status_code == 201
    production_id = production.json()["id"]
    time.sleep(1)
    assert ci.get(f"/api/requests/{production_id}").json()["status"] == "pending"
    assert post(ci, f"/api/requests/{production_id}/approve").status_code == 403  # not their own
    first = post(api(reviewer), f"/api/requests/{production_id}/approve", {"comment": "ok"})
    assert (first.json()["status"], first.json()["approvals"]) == ("pending", 1)
    assert post(api(reviewer2), f"/api/requests/{production_id}/approve").json()["status"] in AFTER_APPROVAL
    wait_for(production_id, Status.APPLIED, celery_worker)
    assert client.get_model_version(model_name, "1").current_stage == "Production"
    applied = AuditEvent.objects.get(action="promotion.applied", request_id=production_id)
    assert applied.details["approved_by"] == ["Rex Tester", "Rita Tester"]
    assert AuditEvent.objects.get(action="request.created", request_id=production_id).details["via"] == "api"


def test_the_worker_sends_signed_webhooks_and_mail_and_a_hanging_target_blocks_nothing(
    registry, model_name, requester, gated_staging, worker_factory, tmp_path
):
    requester.email = "riley@example.com"
    requester.save()
    slow, flaky = Receiver(["hang"]), Receiver([503, 200])
    try:
        WebhookEndpoint.objects.create(name="slow", url=slow.url, secret=SECRET, events=["promotion.applied"])
        WebhookEndpoint.objects.create(
            name="flaky", url=flaky.url, secret=SECRET, events=["request.approved", "promotion.applied"]
        )
        mail_dir = tmp_path / "mail"
        worker = worker_factory(
            WEBHOOK_TIMEOUT_SECONDS="1",
            WEBHOOK_RETRY_BASE_SECONDS="1",
            WEBHOOK_MAX_ATTEMPTS="2",
            EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
            EMAIL_FILE_PATH=str(mail_dir),
        )
        make_version(registry.client(), model_name, metrics={"accuracy": 0.9})

        started = time.monotonic()
        response = post(
            api(requester),
            "/api/requests",
            {
                "model_name": model_name,
                "version": 1,
                "stage": "Staging",
                "justification": "CI",
                "evidence": {"tests_passed": True},
            },
        )
        assert time.monotonic() - started < 5  # nothing is sent inside the web request
        request_id = response.json()["id"]
        wait_for(request_id, Status.APPLIED, worker)

        def settled():
            rows = OutboundDelivery.objects.filter(request_id=request_id)
            return rows.count() == 3 and all(row.status in ("delivered", "failed") for row in rows)

        wait_until(settled, timeout=60, message=f"deliveries to settle\n{worker.log()[-3000:]}")
        flaky_rows = OutboundDelivery.objects.filter(endpoint__name="flaky").order_by("id")
        assert [(r.event, r.status) for r in flaky_rows] == [
            ("request.approved", "delivered"),
            ("promotion.applied", "delivered"),
        ]
        assert flaky_rows[0].attempts == 2  # the 503 was retried
        assert flaky_rows[1].attempts == 1
        for headers, body in flaky.calls:
            delivery_id, timestamp = headers["X-Promotion-Delivery-Id"], headers["X-Promotion-Timestamp"]
            assert headers["X-Promotion-Signature"] == sign(SECRET, delivery_id, timestamp, body)
        # the retried approval may arrive after the applied event: compare without the order
        texts = {json.loads(body)["text"].split(" (", 1)[0] for _headers, body in flaky.calls}
        assert texts == {f"Approved: {model_name} v1 → Staging", f"Applied: {model_name} v1 → Staging"}
        slow_row = OutboundDelivery.objects.get(endpoint__name="slow")
        assert (slow_row.status, slow_row.attempts) == ("failed", 2)
        assert "timed out" in slow_row.last_error

        def mails():
            return (
                [message_from_bytes(p.read_bytes(), policy=policy.default) for p in mail_dir.glob("*.log")]
                if mail_dir.exists()
                else []
            )

        # An e-mail that met a busy database is retried with its backoff (5 s, then 10 s): as long
        # as the deliveries' wait.
        wait_until(lambda: len(mails()) >= 2, timeout=60, message="two mails to the requester")
        subjects = sorted(m["Subject"].strip() for m in mails())
        assert any(s.startswith("[Promotions] Applied:") for s in subjects), subjects
        assert all(m["To"] == "riley@example.com" for m in mails())
    finally:
        slow.close()
        flaky.close()
