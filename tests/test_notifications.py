"""E-mail and signed webhooks: recorded with the event, sent by the worker's tasks.

Tasks are called in-process here (the worker-process path is in test_api_pipeline.py), some of
them taken off the real broker first; the receiving side is a real HTTP server on 127.0.0.1,
Django's locmem mail backend, or a real SMTP connection to a closed port or a refusing server.
"""

import json
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from config.celery import app as celery_app
from promotions import notifications, roles, services
from promotions.models import OutboundDelivery, OutboundEmail, PromotionRequest, WebhookEndpoint
from registry_sync.webhooks import sign
from tests.conftest import broker_unreachable, free_port, make_user, purge_broker
from tests.factories import mirror_model, stage, version
from tests.mail_server import RefusingMailServer
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.django_db
Delivery = OutboundDelivery.Status
Email = OutboundEmail.Status
SECRET = "s3cret-for-tests-only"


@pytest.fixture
def receiver():
    made = []

    def start(*script):
        made.append(Receiver(script or (200,)))
        return made[-1]

    yield start
    for item in made:
        item.close()


def endpoint(url, events=None, **fields):
    return WebhookEndpoint.objects.create(
        name=fields.pop("name", "chat"),
        url=url,
        secret=SECRET,
        events=list(events or notifications.WEBHOOK_EVENTS),
        **fields,
    )


@pytest.fixture
def people(requester, reviewer, reviewer2):
    for user, address in ((requester, "riley@example.com"), (reviewer, "rex@example.com")):
        user.email = address
        user.save()
    reviewer2.email = "rita@example.com"
    reviewer2.is_active = False  # gone: no mail
    reviewer2.save()
    silent = make_user("sid", roles.REVIEWERS)  # no address: no mail
    return requester, reviewer, silent


@pytest.fixture
def sales():
    return mirror_model(
        "sales<&>forecast",
        {5: {"current_stage": "Staging", "metrics": {"accuracy": 0.93}}, 6: {"current_stage": "None"}},
    )


def file(sales, requester, number=5, target="Production"):
    return services.promotion_request_create(
        version=version(sales, number), stage=stage(target), requested_by=requester, justification="beats v3"
    )


@pytest.fixture
def broker():
    """The test broker's queues, emptied first; `run()` takes every task published since off the
    notification queue and runs this test's e-mail tasks in this process, as a worker would.
    Returns their names."""
    try:
        purge_broker()
    except Exception:  # noqa: BLE001 - an empty or new queue cannot be purged on every transport
        pass

    def run() -> list[str]:
        ran = []
        with celery_app.connection_for_read() as connection:
            queue = connection.SimpleQueue("notify")  # where e-mails are routed
            try:
                while True:
                    try:
                        message = queue.get(timeout=1)
                    except queue.Empty:
                        return ran
                    name, args = message.headers["task"], message.payload[0]
                    message.ack()
                    # Only this test's e-mails: a worker killed by an earlier test may have left
                    # an unacknowledged message that the broker hands back only now.
                    if (
                        name != notifications.EMAIL_TASK
                        or not OutboundEmail.objects.filter(pk=args[0]).exists()
                    ):
                        continue
                    celery_app.tasks[name].apply(args=args, throw=True)
                    ran.append(name)
            finally:
                queue.close()

    return run


def smtp_to(settings, port, **fields):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 2
    for name, value in fields.items():
        setattr(settings, name, value)


# --- e-mail -----------------------------------------------------------------------------------


def test_a_new_request_mails_the_approvers_of_its_stage_but_not_the_requester(people, sales, mailoutbox):
    requester, _, _ = people
    request = file(sales, requester)

    sent = notifications.event_email_send(event="request.created", request_id=request.pk)

    assert sent == 1
    (mail,) = mailoutbox
    assert mail.to == ["rex@example.com"]
    assert mail.subject == f"[Promotions] Review requested: sales<&>forecast v5 → Production (#{request.pk})"
    assert "Justification:\nbeats v3" in mail.body
    assert f"/requests/{request.pk}/" in mail.body


def test_each_approver_gets_a_message_of_their_own(people, sales, mailoutbox, reviewer2):
    requester, _, _ = people
    reviewer2.is_active = True
    reviewer2.save()
    request = file(sales, requester)
    notifications.event_email_send(event="request.created", request_id=request.pk)
    assert sorted(mail.to[0] for mail in mailoutbox) == ["rex@example.com", "rita@example.com"]
    assert all(len(mail.to) == 1 for mail in mailoutbox)


def test_a_stage_that_needs_no_approval_mails_no_approver(people, sales, mailoutbox):
    requester, _, _ = people
    staging = stage("Staging")
    staging.required_approvals = 0
    staging.save()
    request = file(sales, requester, number=6, target="Staging")
    assert request.status == PromotionRequest.Status.APPROVED
    assert notifications.event_email_send(event="request.created", request_id=request.pk) == 0
    assert notifications.event_email_send(event="request.approved", request_id=request.pk) == 1
    assert mailoutbox[0].to == ["riley@example.com"]


def test_the_requester_hears_of_the_rejection_with_its_reason(people, sales, mailoutbox):
    requester, reviewer, _ = people
    request = file(sales, requester)
    services.review_reject(request=request, reviewer=reviewer, comment="needs a holdout evaluation")

    notifications.event_email_send(event="request.rejected", request_id=request.pk)

    (mail,) = mailoutbox
    assert mail.to == ["riley@example.com"]
    assert mail.subject.startswith("[Promotions] Rejected: sales<&>forecast v5 → Production")
    assert "Reason: needs a holdout evaluation" in mail.body


def test_a_requester_who_cancels_is_not_told_what_they_did(people, sales, mailoutbox, stage_admin):
    requester, _, _ = people
    own = file(sales, requester)
    services.request_cancel(request=own, user=requester)
    assert notifications.event_email_send(event="request.cancelled", request_id=own.pk) == 0

    other = file(sales, requester, number=6, target="Staging")
    services.request_cancel(request=other, user=stage_admin)
    assert notifications.event_email_send(event="request.cancelled", request_id=other.pk) == 1


def test_a_subject_never_carries_a_line_break(people, mailoutbox):
    requester, _, _ = people
    model = mirror_model("evil\nBcc: victim@example.com", {1: {"current_stage": "None"}})
    request = services.promotion_request_create(
        version=version(model, 1), stage=stage("Staging"), requested_by=requester, justification="x"
    )
    notifications.event_email_send(event="request.created", request_id=request.pk)
    assert "\n" not in mailoutbox[0].subject
    assert mailoutbox[0].to == ["rex@example.com"]


# --- the e-mail outbox ------------------------------------------------------------------------


def test_an_e_mail_is_published_after_commit_and_sent_once_however_often_its_task_runs(
    people, sales, mailoutbox, broker, django_capture_on_commit_callbacks
):
    requester, _, _ = people
    with django_capture_on_commit_callbacks(execute=True):
        request = file(sales, requester)
    email = OutboundEmail.objects.get()
    assert (email.kind, email.payload, email.status) == (
        OutboundEmail.Kind.EVENT,
        {"event": "request.created", "request_id": request.pk},
        Email.PENDING,
    )

    assert broker() == [notifications.EMAIL_TASK]
    # A second copy of the task (the sweeper's, or a redelivery) finds the row sent.
    assert notifications.send_email.apply(args=[email.pk]).get() == "skipped"
    assert notifications.email_send(email_pk=email.pk) is None

    (mail,) = mailoutbox
    assert mail.to == ["rex@example.com"]
    email.refresh_from_db()
    assert (email.status, email.attempts, email.last_error) == (Email.SENT, 1, "")
    assert email.sent_at is not None
    assert notifications.emails_sweep(now=timezone.now() + timedelta(days=1)) == []


def test_an_e_mail_the_broker_could_not_take_is_swept_and_sent_once(
    people, sales, mailoutbox, broker, settings, django_capture_on_commit_callbacks
):
    requester, _, _ = people
    with broker_unreachable(), django_capture_on_commit_callbacks(execute=True) as callbacks:
        file(sales, requester)
    assert callbacks  # the publish was tried, and failed
    email = OutboundEmail.objects.get()
    assert email.status == Email.PENDING
    assert broker() == [] and mailoutbox == []

    assert notifications.emails_sweep() == []  # not stuck yet: its task may only be late
    later = timezone.now() + timedelta(seconds=settings.EMAIL_STUCK_AFTER_SECONDS + 1)
    assert notifications.emails_sweep(now=later) == [email.pk]
    assert broker() == [notifications.EMAIL_TASK]

    (mail,) = mailoutbox
    assert mail.to == ["rex@example.com"]
    assert OutboundEmail.objects.get().status == Email.SENT
    assert notifications.emails_sweep(now=later) == []
    beat = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "promotions.sweep_emails" in beat


def test_an_e_mail_being_sent_is_left_to_its_attempt_until_that_is_presumed_dead(
    people, sales, mailoutbox, settings
):
    requester, _, _ = people
    file(sales, requester)
    email = OutboundEmail.objects.get()
    rows = OutboundEmail.objects.filter(pk=email.pk)
    rows.update(status=Email.SENDING, attempts=1, last_attempt_at=timezone.now())

    assert notifications.email_send(email_pk=email.pk) is None
    assert notifications.emails_sweep() == []
    assert mailoutbox == []

    dead = timezone.now() - timedelta(seconds=settings.EMAIL_STUCK_AFTER_SECONDS + 1)
    rows.update(last_attempt_at=dead)
    assert notifications.emails_sweep() == [email.pk]
    assert notifications.email_send(email_pk=email.pk).status == Email.SENT
    assert len(mailoutbox) == 1
    assert rows.get().attempts == 2

    # An attempt that dies at the last allowed attempt leaves the e-mail failed, not stuck.
    settings.EMAIL_MAX_ATTEMPTS = 2
    rows.update(status=Email.SENDING, last_attempt_at=dead)
    assert notifications.email_send(email_pk=email.pk) is None
    assert (rows.get().status, rows.get().last_error) == (Email.FAILED, "The last attempt did not finish.")
    assert notifications.emails_sweep() == []
    assert len(mailoutbox) == 1


def test_a_mail_server_that_is_down_is_retried_then_the_e_mail_fails_visibly(people, sales, settings):
    requester, _, _ = people
    smtp_to(settings, free_port(), EMAIL_MAX_ATTEMPTS=3)
    file(sales, requester)
    email = OutboundEmail.objects.get()

    first = notifications.email_send(email_pk=email.pk)

    assert (first.status, first.sent) == (Email.PENDING, 0)
    assert 2.5 <= first.retry_in <= 5
    email.refresh_from_db()
    assert (email.status, email.attempts) == (Email.PENDING, 1)
    assert email.last_error.startswith("ConnectionRefusedError: ")
    # The task retries until the bound the database keeps.
    notifications.send_email.apply(args=[email.pk])
    email.refresh_from_db()
    assert (email.status, email.attempts, email.sent_at) == (Email.FAILED, 3, None)
    assert notifications.email_send(email_pk=email.pk) is None
    assert notifications.emails_sweep(now=timezone.now() + timedelta(days=1)) == []


def test_a_mail_server_error_is_stored_without_the_password(people, sales, settings):
    requester, _, _ = people
    server = RefusingMailServer()
    try:
        smtp_to(settings, server.port, EMAIL_HOST_USER="promotions", EMAIL_HOST_PASSWORD="smtp-5ecret-value")
        file(sales, requester)
        attempt = notifications.email_send(email_pk=OutboundEmail.objects.get().pk)
    finally:
        server.close()

    assert attempt.status == Email.PENDING
    stored = OutboundEmail.objects.get().last_error
    assert stored.startswith("SMTPAuthenticationError: (535") and "login refused: promotions ***" in stored
    assert "smtp-5ecret-value" not in stored + attempt.error


# --- every event is recorded for the endpoints that want it -----------------------------------


def test_the_services_record_one_delivery_per_event_and_endpoint(people, sales, stage_admin):
    requester, reviewer, _ = people
    everything = endpoint("http://127.0.0.1:9/all", name="all")
    endpoint("http://127.0.0.1:9/created", events=["request.created"], name="created-only")
    endpoint("http://127.0.0.1:9/off", name="off", is_active=False)

    rejected = file(sales, requester)
    services.review_reject(request=rejected, reviewer=reviewer, comment="no")
    cancelled = file(sales, requester)
    services.request_cancel(request=cancelled, user=stage_admin)
    expired = file(sales, requester, number=6, target="Staging")
    services.requests_expire(now=timezone.now() + timedelta(days=30))
    staging = stage("Staging")
    staging.required_approvals = 0
    staging.save()
    automatic = file(sales, requester, number=6, target="Staging")

    def events(request):
        return list(
            OutboundDelivery.objects.filter(endpoint=everything, request_id=request.pk)
            .order_by("id")
            .values_list("event", flat=True)
        )

    assert events(rejected) == ["request.created", "request.rejected"]
    assert events(cancelled) == ["request.created", "request.cancelled"]
    assert events(expired) == ["request.created", "request.expired"]
    assert events(automatic) == ["request.created", "request.approved"]
    assert OutboundDelivery.objects.filter(endpoint__name="created-only").count() == 4
    assert not OutboundDelivery.objects.filter(endpoint__name="off").exists()
    assert set(OutboundDelivery.objects.values_list("status", flat=True)) == {Delivery.PENDING}
    emails = OutboundEmail.objects.filter(payload__request_id=rejected.pk).order_by("id")
    assert [email.payload["event"] for email in emails] == ["request.created", "request.rejected"]


def test_a_refused_action_records_no_delivery(people, sales):
    requester, _, _ = people
    endpoint("http://127.0.0.1:9/all")
    request = file(sales, requester)
    with pytest.raises(Exception):  # noqa: B017 - the refusal itself is tested elsewhere
        services.review_approve(request=request, reviewer=requester)
    assert list(OutboundDelivery.objects.values_list("event", flat=True)) == ["request.created"]
    assert [email.payload["event"] for email in OutboundEmail.objects.all()] == ["request.created"]


def test_a_failed_apply_is_an_event_too(mlflow_proxy, model_name, requester, reviewer, reviewer2, registry):
    from tests.apply_helpers import approved_request, registry_with_production

    registry_with_production(registry.client(), model_name)
    hook = endpoint("http://127.0.0.1:9/all", events=["promotion.failed"])
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    mlflow_proxy.mode = "deny"

    assert services.promotion_apply(request_id=request.pk) == "failed"

    (delivery,) = OutboundDelivery.objects.filter(endpoint=hook)
    assert delivery.event == "promotion.failed"
    assert delivery.payload["request"]["status"] == "failed"
    assert (
        delivery.payload["request"]["reason"] == PromotionRequest.objects.get(pk=request.pk).last_error != ""
    )


# --- sending ----------------------------------------------------------------------------------


def test_a_delivery_is_signed_like_mlflow_webhooks_and_slack_readable(people, sales, receiver):
    requester, _, _ = people
    target = receiver(200)
    endpoint(target.url, events=["request.created"])
    request = file(sales, requester)
    delivery = OutboundDelivery.objects.get()

    attempt = notifications.webhook_deliver(delivery_pk=delivery.pk)

    assert attempt.status == Delivery.DELIVERED
    ((headers, body),) = target.calls
    assert headers["X-Promotion-Delivery-Id"] == delivery.delivery_id
    timestamp = headers["X-Promotion-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    assert headers["X-Promotion-Signature"] == sign(SECRET, delivery.delivery_id, timestamp, body)
    payload = json.loads(body)
    assert payload["event"] == "request.created"
    assert payload["request"]["id"] == request.pk and payload["request"]["status"] == "pending"
    assert payload["text"].startswith("Requested: sales&lt;&amp;&gt;forecast v5 → Production (<http")
    delivery.refresh_from_db()
    assert (delivery.status, delivery.response_code, delivery.attempts) == (Delivery.DELIVERED, 200, 1)
    assert delivery.delivered_at is not None


def test_a_5xx_is_retried_with_backoff_keeping_the_delivery_id(people, sales, receiver, settings):
    requester, _, _ = people
    settings.WEBHOOK_RETRY_BASE_SECONDS = 4
    target = receiver(503, 200)
    endpoint(target.url, events=["request.created"])
    file(sales, requester)
    delivery = OutboundDelivery.objects.get()

    first = notifications.webhook_deliver(delivery_pk=delivery.pk)
    assert first.status == Delivery.RETRYING and 2 <= first.retry_in <= 4
    second = notifications.webhook_deliver(delivery_pk=delivery.pk)
    assert second.status == Delivery.DELIVERED

    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.response_code, delivery.last_error) == (2, 200, "")
    ids = {headers["X-Promotion-Delivery-Id"] for headers, _ in target.calls}
    assert ids == {delivery.delivery_id}
    assert notifications.webhook_deliver(delivery_pk=delivery.pk) is None  # nothing left to do
    assert len(target.calls) == 2


def test_retries_are_bounded_then_the_delivery_fails_visibly(people, sales, receiver, settings):
    requester, _, _ = people
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    target = receiver(500)
    endpoint(target.url, events=["request.created"])
    file(sales, requester)
    delivery = OutboundDelivery.objects.get()

    outcomes = [notifications.webhook_deliver(delivery_pk=delivery.pk).status for _ in range(3)]

    assert outcomes == [Delivery.RETRYING, Delivery.RETRYING, Delivery.FAILED]
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.response_code) == (3, 500)
    assert delivery.last_error.startswith("HTTP 500")


def test_a_target_that_hangs_costs_one_short_timeout(people, sales, receiver, settings):
    requester, _, _ = people
    settings.WEBHOOK_TIMEOUT_SECONDS = 1
    target = receiver("hang")
    endpoint(target.url, events=["request.created"])
    file(sales, requester)
    delivery = OutboundDelivery.objects.get()

    started = time.monotonic()
    attempt = notifications.webhook_deliver(delivery_pk=delivery.pk)

    assert time.monotonic() - started < 2.5
    assert attempt.status == Delivery.RETRYING
    assert "timed out" in attempt.error


@pytest.mark.parametrize(("answer", "code"), [(404, 404), (410, 410), ("redirect", 302)])
def test_a_misconfigured_target_fails_at_once_and_redirects_are_not_followed(
    people, sales, receiver, answer, code
):
    requester, _, _ = people
    target = receiver(answer)
    endpoint(target.url, events=["request.created"])
    file(sales, requester)
    delivery = OutboundDelivery.objects.get()

    attempt = notifications.webhook_deliver(delivery_pk=delivery.pk)

    assert (attempt.status, attempt.response_code, attempt.retry_in) == (Delivery.FAILED, code, None)
    assert len(target.calls) == 1


def test_an_unreachable_target_is_retried(people, sales):
    requester, _, _ = people
    endpoint("http://127.0.0.1:9/closed", events=["request.created"])
    file(sales, requester)
    attempt = notifications.webhook_deliver(delivery_pk=OutboundDelivery.objects.get().pk)
    assert attempt.status == Delivery.RETRYING and attempt.response_code is None
    assert "refused" in attempt.error.lower()


def test_the_sweeper_publishes_deliveries_nobody_sent(people, sales, settings):
    requester, _, _ = people
    endpoint("http://127.0.0.1:9/x", events=["request.created"])
    file(sales, requester)
    delivery = OutboundDelivery.objects.get()
    assert notifications.deliveries_sweep() == []
    later = timezone.now() + timedelta(seconds=settings.WEBHOOK_STUCK_AFTER_SECONDS + 1)
    assert notifications.deliveries_sweep(now=later) == [delivery.pk]


# --- the admin pages --------------------------------------------------------------------------


@pytest.fixture
def admin_client(client, stage_admin):
    client.force_login(stage_admin)
    return client


def test_a_stage_admin_adds_an_endpoint_and_it_is_audited_without_the_secret(admin_client):
    response = admin_client.post(
        "/admin/promotions/webhookendpoint/add/",
        {
            "name": "slack",
            "url": "https://hooks.example.com/T000",
            "secret": "a-long-enough-secret",
            "events": ["request.created", "promotion.applied"],
            "is_active": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    hook = WebhookEndpoint.objects.get()
    assert hook.events == ["request.created", "promotion.applied"]
    from promotions.models import AuditEvent

    event = AuditEvent.objects.get(action="webhook.created")
    assert "a-long-enough-secret" not in json.dumps(event.details) + event.meaning


def test_a_short_secret_or_a_non_http_url_is_refused(admin_client):
    response = admin_client.post(
        "/admin/promotions/webhookendpoint/add/",
        {"name": "x", "url": "ftp://example.com/", "secret": "short", "events": ["request.created"]},
    )
    assert response.status_code == 200
    assert not WebhookEndpoint.objects.exists()
    assert "at least 16 characters" in response.content.decode()


def test_a_delivery_is_resent_as_a_new_delivery(admin_client, people, sales):
    requester, _, _ = people
    endpoint("http://127.0.0.1:9/x", events=["request.created"])
    file(sales, requester)
    original = OutboundDelivery.objects.get()
    OutboundDelivery.objects.filter(pk=original.pk).update(status=Delivery.FAILED, attempts=6)

    page = admin_client.get("/admin/promotions/outbounddelivery/")
    assert page.status_code == 200 and "Re-send the selected deliveries" in page.content.decode()
    response = admin_client.post(
        "/admin/promotions/outbounddelivery/",
        {"action": "resend", "_selected_action": [original.pk]},
    )

    assert response.status_code == 302
    again = OutboundDelivery.objects.exclude(pk=original.pk).get()
    assert (again.status, again.attempts, again.payload) == (Delivery.PENDING, 0, original.payload)
    assert again.delivery_id != original.delivery_id


def test_staff_without_the_stage_admin_role_cannot_see_webhooks(client, reviewer):
    reviewer.is_staff = True
    reviewer.save()
    reviewer.user_permissions.set(Permission.objects.filter(codename__endswith="webhookendpoint"))
    client.force_login(reviewer)
    assert client.get("/admin/promotions/webhookendpoint/").status_code == 403
    assert client.get("/admin/promotions/outbounddelivery/").status_code == 403
    assert client.get("/admin/promotions/outboundemail/").status_code == 403


def test_a_delivery_to_an_inside_address_is_refused_at_send_time(settings, people, sales, receiver):
    """An endpoint saved before the check, or a name that resolves inside later (rebinding)."""
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    target = receiver(200)
    requester, _, _ = people
    port = target.url.split(":")[2].split("/")[0]
    for url, number, target_stage in (
        (target.url, 5, "Production"),
        (f"http://localhost:{port}/hook", 6, "Staging"),
    ):
        OutboundDelivery.objects.all().delete()
        WebhookEndpoint.objects.all().delete()
        endpoint(url, events=["request.created"])
        file(sales, requester, number=number, target=target_stage)
        delivery = OutboundDelivery.objects.get()
        attempt = notifications.webhook_deliver(delivery_pk=delivery.pk)
        assert attempt.status == OutboundDelivery.Status.FAILED, url  # at once: no retry helps
        assert "Refused" in attempt.error and "loopback" in attempt.error
    assert target.calls == []
