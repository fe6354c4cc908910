"""Escalation: a request pending longer than its stage's escalate_after is brought to the stage
admins (once, then daily), shows "Escalated · waiting …" in red, and still expires."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.utils import timezone

from bench.common import wait_until
from promotions import notifications, services
from promotions.models import (
    AuditEvent,
    OutboundDelivery,
    OutboundEmail,
    PromotionRequest,
    Stage,
    WebhookEndpoint,
)
from promotions.services.escalation import requests_escalate
from promotions.tasks import escalate_requests
from tests.conftest import make_user
from tests.factories import mirror_model, stage, version
from tests.test_api import api_client
from tests.test_stage_admin import current_form

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status


@pytest.fixture
def escalating():
    Stage.objects.filter(name="Production").update(escalate_after=timedelta(days=2))
    return stage("Production")


def file(requester, *, days_ago: float = 0):
    model = mirror_model(None, {5: {"current_stage": "Staging"}})
    request = services.promotion_request_create(
        version=version(model, 5), stage=stage("Production"), requested_by=requester, justification="Q3"
    )
    if days_ago:
        filed = timezone.now() - timedelta(days=days_ago)
        PromotionRequest.objects.filter(pk=request.pk).update(created_at=filed, updated_at=filed)
        request.refresh_from_db()
    return request


def escalations(request) -> int:
    return AuditEvent.objects.filter(action="request.escalated", request_id=request.pk).count()


# --- the service, with a clock of the test's own -------------------------------------------------


def test_it_escalates_once_past_the_wait_then_daily(escalating, requester):
    request = file(requester)
    filed = request.created_at
    assert requests_escalate(now=filed + timedelta(days=1)) == 0
    due = filed + timedelta(days=2, minutes=1)
    assert requests_escalate(now=due) == 1
    assert requests_escalate(now=due) == 0  # the next beat: nothing new
    assert requests_escalate(now=due + timedelta(hours=23)) == 0
    assert requests_escalate(now=due + timedelta(hours=24)) == 1  # a day later, again
    request.refresh_from_db()
    assert (request.escalated_at, request.last_escalation_at) == (due, due + timedelta(hours=24))
    assert escalations(request) == 2
    event = AuditEvent.objects.filter(action="request.escalated").order_by("sequence").first()
    assert event.meaning.endswith("to Production: waiting 2 days")
    assert event.details["first"] is True


def test_two_beats_that_read_the_same_due_request_escalate_it_once(escalating, requester):
    request = file(requester, days_ago=3)
    # Both read it as due; the compare-and-set on last_escalation_at lets one of them through.
    seen_by_first = PromotionRequest.objects.select_related("version__model", "stage").get(pk=request.pk)
    seen_by_second = PromotionRequest.objects.select_related("version__model", "stage").get(pk=request.pk)
    now = timezone.now()
    assert services.escalation.request_escalate(request=seen_by_first, now=now) is True
    assert services.escalation.request_escalate(request=seen_by_second, now=now) is False
    assert escalations(request) == 1
    assert OutboundEmail.objects.filter(payload__event="request.escalated").count() == 1


def test_a_stage_without_escalation_and_a_decided_request_are_left_alone(escalating, requester, reviewer):
    Stage.objects.filter(name="Staging").update(escalate_after=None)
    model = mirror_model(None, {5: {"current_stage": "None"}})
    to_staging = services.promotion_request_create(
        version=version(model, 5), stage=stage("Staging"), requested_by=requester, justification="x"
    )
    rejected = file(requester)
    services.review_reject(request=rejected, reviewer=reviewer, comment="no")
    assert requests_escalate(now=timezone.now() + timedelta(days=30)) == 0
    assert escalations(to_staging) == escalations(rejected) == 0


def test_an_escalated_request_still_expires(escalating, requester):
    request = file(requester)
    assert requests_escalate(now=request.created_at + timedelta(days=3)) == 1
    assert services.requests_expire(now=request.expires_at + timedelta(seconds=1)) == 1
    request.refresh_from_db()
    assert request.status == Status.EXPIRED
    assert requests_escalate(now=request.expires_at + timedelta(days=2)) == 0  # expired: done


# --- who is told ----------------------------------------------------------------------------------


def test_the_stage_admins_are_mailed_and_the_webhook_event_is_recorded(
    escalating, requester, reviewer, stage_admin, mailoutbox
):
    stage_admin.email = "sam@example.com"
    stage_admin.save()
    reviewer.email = "rex@example.com"
    reviewer.save()
    make_user("ada", "Stage admins", email="ada@example.com", is_active=False)
    WebhookEndpoint.objects.create(
        name="chat", url="https://chat.example.com/hook", secret="s" * 20, events=["request.escalated"]
    )
    request = file(requester, days_ago=3)
    requests_escalate()
    delivery = OutboundDelivery.objects.get(event="request.escalated")
    assert delivery.payload["request"]["id"] == request.pk
    assert "Escalated:" in delivery.payload["text"]
    email = OutboundEmail.objects.get(payload__event="request.escalated")
    assert notifications.email_send(email_pk=email.pk).sent == 1
    (message,) = mailoutbox
    assert message.to == ["sam@example.com"]
    assert message.subject.startswith("[Promotions] Escalated:")
    assert "waiting 3 days (Production escalates after 2 days)" in message.body


# --- the pages ------------------------------------------------------------------------------------


def test_the_queue_and_the_request_page_say_it_in_red_words(client, escalating, requester, reviewer):
    late, fresh = file(requester, days_ago=3), file(requester)
    requests_escalate()
    client.force_login(reviewer)
    body = client.get("/?tab=open").content.decode()
    assert body.count("Escalated · waiting") == 1
    assert '<span class="bad" data-escalated' in body
    row = body.split(f">#{late.pk}</a>", 1)[1].split("</tr>", 1)[0]
    assert "Escalated · waiting 3 days" in row
    assert "Escalated" not in body.split(f">#{fresh.pk}</a>", 1)[1].split("</tr>", 1)[0]
    page = client.get(f"/requests/{late.pk}/").content.decode()
    assert "Escalated · waiting 3 days" in page


def test_the_catalog_page_says_the_wait_in_words(client, escalating, requester):
    client.force_login(requester)
    html = client.get("/stages/").content.decode()
    assert "a request pending longer than 2 days is escalated to the stage admins" in html


def test_the_beat_runs_the_task_on_its_interval():
    entry = settings.CELERY_BEAT_SCHEDULE["escalate-requests"]
    assert entry["task"] == escalate_requests.name == "promotions.escalate_requests"
    assert entry["schedule"] == float(settings.PROMOTION_ESCALATE_INTERVAL_SECONDS)


def test_the_task_refuses_a_clock_without_a_timezone(db):
    with pytest.raises(ValueError, match="with an offset"):
        escalate_requests("2026-12-03T10:00:00")


# --- through a real worker --------------------------------------------------------------------------


def test_a_worker_escalates_with_the_clock_the_task_is_sent(celery_worker, requester):
    Stage.objects.filter(name="Production").update(escalate_after=timedelta(days=2))
    request = file(requester)
    later = (request.created_at + timedelta(days=2, hours=1)).isoformat()
    escalate_requests.delay(later)
    wait_until(
        lambda: escalations(request) == 1,
        timeout=60,
        message=f"the worker to escalate #{request.pk}\n{celery_worker.log()[-2000:]}",
    )
    request.refresh_from_db()
    assert request.escalated_at.isoformat() == later
    assert request.status == Status.PENDING


def test_the_api_shows_the_wait_and_when_a_request_was_escalated(escalating, requester):
    request = file(requester, days_ago=3)
    requests_escalate()
    client = api_client(requester)
    production = client.get("/api/stages/Production").json()
    assert production["escalate_after_seconds"] == 2 * 86400
    assert client.get(f"/api/requests/{request.pk}").json()["escalated_at"] is not None


def production_form(**overrides):
    return current_form("Production", **overrides)


@pytest.mark.parametrize(
    "wait, error",
    [("-1 00:00:00", "Escalation needs a positive wait"), ("soon", "Enter a valid duration")],
)
def test_the_stage_admin_form_sets_the_wait_audited_and_refuses_a_bad_one(client, stage_admin, wait, error):
    stage_admin.user_permissions.set(Permission.objects.filter(codename__endswith="_stage"))
    client.force_login(stage_admin)
    production = stage("Production")
    url = f"/admin/promotions/stage/{production.pk}/change/"
    response = client.post(url, production_form(escalate_after="2 00:00:00"))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert stage("Production").escalate_after == timedelta(days=2)
    change = AuditEvent.objects.get(action="stage.changed").details["changes"]["escalate_after"]
    assert change == {"before": None, "after": "2 days, 0:00:00"}
    refused = client.post(url, production_form(escalate_after=wait))
    assert refused.status_code == 200
    assert error in refused.content.decode()
    assert stage("Production").escalate_after == timedelta(days=2)
