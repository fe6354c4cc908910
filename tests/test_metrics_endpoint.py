"""/metrics: Prometheus text for a scraper holding the token or calling from an allowed network,
nothing for anyone else; figures that match the database; model labels capped."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from bench.common import wait_until
from common.redact import redact
from config.env import envnetworks
from promotions import audit, services
from promotions.errors import TransientApplyError
from promotions.models import (
    AuditEvent,
    DriftRevert,
    OutboundDelivery,
    PromotionRequest,
    WebhookEndpoint,
    WorkerHeartbeat,
)
from promotions.observability.views import REFUSALS
from registry_sync.models import DriftEvent, ModelVersion, RegisteredModel, SyncRun
from tests.apply_helpers import approved_request, registry_with_production
from tests.conftest import free_port
from tests.factories import audit_history, mirror_model, stage, version
from tests.tampering import tamper, tampering_db

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status
TOKEN = "scrape-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
# One scrape, whatever the size of the tables (promotions/observability/state.py).
SCRAPE_QUERIES = 12


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = ()
    return TOKEN


def scrape(client) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics", headers=BEARER)
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(figures, name: str, **labels) -> float:
    return figures.get((name, frozenset(labels.items())), 0.0)


def request_in(model_version, stage_name: str, status: str, **fields) -> PromotionRequest:
    now = timezone.now()
    return PromotionRequest.objects.create(
        version=model_version,
        stage=stage(stage_name),
        requested_by_name="Riley Tester",
        justification="metrics",
        status=status,
        evidence_sha256="0" * 64,
        created_at=fields.pop("created_at", now),
        updated_at=now,
        expires_at=now + timedelta(days=7),
        **fields,
    )


# --- who may read them ----------------------------------------------------------------------


def test_it_answers_404_to_everyone_when_nothing_is_configured(client, settings):
    settings.METRICS_TOKEN, settings.METRICS_ALLOWED_NETWORKS = "", ()
    for headers in ({}, {"Authorization": "Bearer anything"}):
        response = client.get("/metrics", headers=headers)
        assert (response.status_code, response.content) == (404, REFUSALS[404])


def test_without_the_token_it_answers_401_and_reveals_nothing(client, token):
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.content == REFUSALS[401]


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN}x",
        "Bearer ",
        TOKEN,
        "Basic c2NyYXBlOnRva2Vu",
        "Bearer wrong",
        "Bearer " + "é" * 20,
        "Bearer " + "x" * 20_000,
        f"bearer  {TOKEN[:-1]}",
    ],
)
def test_a_wrong_or_malformed_token_answers_401(client, token, header):
    response = client.get("/metrics", headers={"Authorization": header})
    assert (response.status_code, response.content) == (401, REFUSALS[401])


def test_the_right_token_reads_the_metrics(client, token):
    assert value(scrape(client), "promotions_metrics_database_up") == 1


def test_it_needs_no_session_and_refuses_post(client, token):
    assert client.post("/metrics", headers=BEARER).status_code == 405


def test_an_allowed_network_reads_them_without_a_token(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = envnetworks_of("10.0.0.0/8, 192.168.1.7")
    assert client.get("/metrics", REMOTE_ADDR="10.20.30.40").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.168.1.7").status_code == 200


def test_others_are_refused_with_403(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = envnetworks_of("10.0.0.0/8")
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert (response.status_code, response.content) == (403, REFUSALS[403])


def test_a_forwarded_address_counts_only_behind_a_trusted_proxy(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = envnetworks_of("10.0.0.0/8")
    forged = {"REMOTE_ADDR": "203.0.113.9", "HTTP_X_FORWARDED_FOR": "10.0.0.1"}
    assert client.get("/metrics", **forged).status_code == 403
    settings.TRUSTED_PROXY_COUNT = 1
    assert client.get("/metrics", **forged).status_code == 200


def test_a_wrong_token_is_refused_even_from_an_allowed_network(client, token, settings):
    settings.METRICS_ALLOWED_NETWORKS = envnetworks_of("10.0.0.0/8")
    response = client.get("/metrics", REMOTE_ADDR="10.0.0.1", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


def envnetworks_of(text: str):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("METRICS_ALLOWED_NETWORKS", text)
        return envnetworks("METRICS_ALLOWED_NETWORKS")


@pytest.mark.parametrize("text", ["10.0.0.0/33", "intranet", "10.0.0.0/8, ::1/129"])
def test_a_bad_network_stops_start_up(monkeypatch, text):
    monkeypatch.setenv("METRICS_ALLOWED_NETWORKS", text)
    with pytest.raises(ImproperlyConfigured, match="METRICS_ALLOWED_NETWORKS"):
        envnetworks("METRICS_ALLOWED_NETWORKS")


def test_the_token_is_a_secret_to_the_logs_and_the_output(client, token, settings):
    assert TOKEN not in redact(f"scraped with Authorization: {TOKEN} and {TOKEN}")
    settings.HEALTHZ_TOKEN = "healthz-secret-9876"
    settings.MLFLOW_WEBHOOK_SECRET = "webhook-secret-5432"
    body = client.get("/metrics", headers=BEARER).content.decode()
    for secret in (TOKEN, settings.HEALTHZ_TOKEN, settings.MLFLOW_WEBHOOK_SECRET, settings.SECRET_KEY):
        assert secret not in body


# --- what they say --------------------------------------------------------------------------


def test_the_figures_match_the_database(client, token):
    now = timezone.now()
    sales = version(mirror_model("sales_forecast", {5: {}, 6: {}}), 5)
    churn = version(mirror_model("churn", {1: {}}), 1)
    request_in(sales, "Production", Status.PENDING)
    request_in(churn, "Production", Status.PENDING)
    request_in(sales, "Staging", Status.APPROVED, decided_at=now - timedelta(seconds=600))
    request_in(churn, "Staging", Status.APPLIED)
    request_in(sales, "Production", Status.FAILED)
    request_in(churn, "Archived", Status.APPLYING, lease_expires_at=now - timedelta(seconds=5))
    endpoint = WebhookEndpoint.objects.create(name="chat", url="https://chat.example/hook", secret="s" * 20)
    for status, age in (("pending", 120), ("retrying", 30), ("delivered", 900), ("failed", 60)):
        OutboundDelivery.objects.create(
            endpoint=endpoint,
            event="request.created",
            delivery_id=f"d-{status}",
            status=status,
            created_at=now - timedelta(seconds=age),
        )
    WorkerHeartbeat.objects.create(marker="beat", worker="w1", seen_at=now - timedelta(seconds=42))
    SyncRun.objects.create(
        trigger="schedule", started_at=now - timedelta(seconds=95), finished_at=now - timedelta(seconds=90)
    )
    SyncRun.objects.create(
        trigger="schedule", started_at=now - timedelta(seconds=5), finished_at=now, error="down"
    )
    drift = DriftEvent.objects.create(
        model=sales.model, version=5, kind="stage", before="Staging", after="None", detected_at=now
    )
    DriftRevert.objects.create(drift_event=drift, status="pending", created_at=now, updated_at=now)

    figures = scrape(client)

    assert value(figures, "promotions_requests", status="pending", stage="Production") == 2
    assert value(figures, "promotions_requests", status="approved", stage="Staging") == 1
    assert value(figures, "promotions_requests", status="applied", stage="Staging") == 1
    assert value(figures, "promotions_requests", status="failed", stage="Production") == 1
    assert value(figures, "promotions_requests", status="applying", stage="Archived") == 1
    # every status of every stage, zeros included, so a rate or an absence alert has a series
    assert ("promotions_requests", frozenset({"status": "expired", "stage": "Staging"}.items())) in figures
    assert value(figures, "promotions_open_requests_by_model", model="sales_forecast") == 2
    assert value(figures, "promotions_open_requests_by_model", model="churn") == 2
    assert value(figures, "promotions_applies_abandoned") == 1
    assert 600 <= value(figures, "promotions_oldest_approved_age_seconds") < 700
    assert value(figures, "promotions_outbound_deliveries", status="delivered") == 1
    assert value(figures, "promotions_outbound_deliveries_backlog") == 2
    assert 120 <= value(figures, "promotions_outbound_deliveries_backlog_age_seconds") < 200
    assert value(figures, "promotions_outbound_emails_backlog") == 0
    assert 42 <= value(figures, "promotions_worker_heartbeat_age_seconds", marker="beat") < 100
    # the failed run is not a success: the age is the one before it
    assert 90 <= value(figures, "registry_sync_last_success_age_seconds") < 150
    assert value(figures, "registry_drift_events", resolved="false") == 1
    assert value(figures, "promotions_drift_reverts", status="pending") == 1
    assert value(figures, "promotions_audit_entries") == audit.chain_head()[0]


def test_what_never_happened_is_infinitely_old(client, token):
    figures = scrape(client)
    assert math.isinf(value(figures, "registry_sync_last_success_age_seconds"))
    assert math.isinf(value(figures, "promotions_audit_verification_age_seconds"))


def test_a_recorded_verification_of_the_audit_log_shows_in_the_metrics(client, token):
    call_command("verify_audit_log")
    assert not AuditEvent.objects.filter(action="audit.verified").exists()  # a plain run is a read
    call_command("verify_audit_log", "--record")
    entry = AuditEvent.objects.get(action="audit.verified")
    assert entry.details["entries"] == entry.sequence - 1
    assert value(scrape(client), "promotions_audit_verification_age_seconds") < 60


@tampering_db
def test_a_broken_chain_is_never_recorded_as_verified():
    events = audit_history(3)
    tamper("UPDATE promotions_auditevent SET meaning = 'edited' WHERE sequence = %s", [events[0].sequence])
    with pytest.raises(CommandError):
        call_command("verify_audit_log", "--record")
    assert not AuditEvent.objects.filter(action="audit.verified").exists()


@tampering_db
def test_the_scheduled_verification_records_an_intact_chain_and_never_a_broken_one():
    from promotions.tasks import verify_audit_log

    events = audit_history(3)
    assert verify_audit_log() is True
    assert AuditEvent.objects.filter(action="audit.verified").count() == 1
    tamper("UPDATE promotions_auditevent SET meaning = 'edited' WHERE sequence = %s", [events[0].sequence])
    assert verify_audit_log() is False
    assert AuditEvent.objects.filter(action="audit.verified").count() == 1


def test_a_failed_verification_is_never_recorded_as_one():
    with pytest.raises(ValueError):
        audit.record_verification(audit.ChainReport(ok=False, count=3, head_hash="0" * 64, reason="broken"))
    assert not AuditEvent.objects.filter(action="audit.verified").exists()


def test_model_labels_are_capped_and_the_rest_are_other(client, token, settings):
    now = timezone.now()
    models = RegisteredModel.objects.bulk_create(
        RegisteredModel(name=f"flood_{n:03d}", aliases={}) for n in range(150)
    )
    versions = ModelVersion.objects.bulk_create(ModelVersion(model=model, version=1) for model in models)
    # one model with three open requests: the busiest is always named
    busiest = version(mirror_model('busy "quoted"\nname', {1: {}, 2: {}, 3: {}}), 1)
    PromotionRequest.objects.bulk_create(
        PromotionRequest(
            version=model_version,
            stage=stage("Staging"),
            requested_by_name="bot",
            justification="flood",
            status=Status.PENDING,
            evidence_sha256="0" * 64,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(days=7),
        )
        for model_version in versions
    )
    for number in (1, 2, 3):
        request_in(
            ModelVersion.objects.get(model=busiest.model, version=number), "Production", Status.PENDING
        )

    with CaptureQueriesContext(connection) as queries:
        figures = scrape(client)
    assert len(queries) == SCRAPE_QUERIES

    labelled = {
        dict(labels)["model"]: n
        for (name, labels), n in figures.items()
        if name == "promotions_open_requests_by_model"
    }
    assert len(labelled) == settings.METRICS_MODEL_LABEL_CAP + 1
    assert labelled['busy "quoted"\nname'] == 3
    assert labelled["other"] == 150 - (settings.METRICS_MODEL_LABEL_CAP - 1)
    assert sum(labelled.values()) == 153

    settings.METRICS_MODEL_LABEL_CAP = 0
    labelled = {labels for (name, labels) in scrape(client) if name == "promotions_open_requests_by_model"}
    assert labelled == {frozenset({"model": "other"}.items())}


def test_the_query_count_does_not_grow_with_the_tables(client, token):
    with CaptureQueriesContext(connection) as queries:
        scrape(client)
    assert len(queries) == SCRAPE_QUERIES


# --- what happened, counted where it happens --------------------------------------------------


def test_a_take_over_of_an_abandoned_apply_is_counted_and_so_is_its_failure(
    client, token, settings, django_capture_on_commit_callbacks
):
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"  # never reached
    before = scrape(client)
    abandoned = request_in(
        version(mirror_model("late", {1: {}}), 1),
        "Staging",
        Status.APPLYING,
        attempts=settings.PROMOTION_MAX_ATTEMPTS,
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert services.promotion_apply(request_id=abandoned.pk) == "failed"

    after = scrape(client)
    for name, labels in (
        ("promotions_apply_takeovers_total", {}),
        ("promotions_apply_attempts_total", {}),
        ("promotions_apply_failures_total", {"reason": "attempts_exhausted"}),
    ):
        assert value(after, name, **labels) - value(before, name, **labels) == 1, name


def test_approvals_retries_failures_applies_and_syncs_are_counted(
    client,
    token,
    mlflow_proxy,
    registry,
    model_name,
    requester,
    reviewer,
    reviewer2,
    stage_admin,
    settings,
    django_capture_on_commit_callbacks,
):
    settings.PROMOTION_MAX_ATTEMPTS = 2
    registry_with_production(registry.client(), model_name)
    before = scrape(client)
    # Figures of the workflow are counted once the change commits (never for a rolled-back one).
    with django_capture_on_commit_callbacks(execute=True):
        request = approved_request(model_name, requester, [reviewer, reviewer2])
        mlflow_proxy.mode = "down"
        with pytest.raises(TransientApplyError):
            services.promotion_apply(request_id=request.pk)
        assert services.promotion_apply(request_id=request.pk) == "failed"
        mlflow_proxy.mode = "pass"
        services.request_retry(request=request, user=stage_admin)
        assert services.promotion_apply(request_id=request.pk) == "applied"

    after = scrape(client)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("promotions_approval_lead_time_seconds_count", stage="Production") == 1
    assert grew("promotions_approval_to_applied_seconds_count", stage="Production") == 1
    assert grew("promotions_apply_attempts_total") == 3
    assert grew("promotions_apply_retries_total") == 1
    assert grew("promotions_apply_failures_total", reason="registry_unavailable") == 1
    assert grew("registry_sync_duration_seconds_count", trigger="command", outcome="ok") >= 1


def test_what_the_worker_counts_shows_in_the_webs_metrics(
    client, token, registry, model_name, requester, reviewer, reviewer2, celery_worker
):
    """Multiprocess mode: the worker's pool processes write their counters where the web reads."""
    registry_with_production(registry.client(), model_name)
    before = scrape(client)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    wait_until(
        lambda: PromotionRequest.objects.get(pk=request.pk).status == Status.APPLIED,
        timeout=90,
        message=f"applied\n{celery_worker.log()[-3000:]}",
    )
    name = "promotions_approval_to_applied_seconds_count"

    def observed():
        # The worker observes the histogram once its transaction has committed: just after the
        # status this test waits for.
        figures = scrape(client)
        return (
            figures
            if value(figures, name, stage="Production") > value(before, name, stage="Production")
            else None
        )

    after = wait_until(observed, timeout=30, message="the apply's lead time in the web's metrics")
    assert value(after, name, stage="Production") - value(before, name, stage="Production") == 1
    assert (
        value(after, "promotions_apply_attempts_total") - value(before, "promotions_apply_attempts_total")
        == 1
    )
