"""The e-mails of a bulk: one message per recipient and event, listing every request of the bulk.

Filed through the bulk service against the real MLflow server, or (where only the outbox is
under test) through the filing service on mirrored models with a bulk id of their own; sent by
the tasks in this process off the real broker, or by a real worker process.
"""

import threading
import uuid
from datetime import timedelta
from email import message_from_bytes, policy

import pytest
from django.db import connections, transaction
from django.utils import timezone

from bench.common import wait_until
from config.celery import app as celery_app
from promotions import notifications, roles, services
from promotions.models import OutboundDelivery, OutboundEmail, PromotionRequest, WebhookEndpoint
from tests.conftest import free_port, make_user, purge_broker
from tests.factories import mirror_model, stage, version
from tests.registry_helpers import make_version
from tests.webhook_receiver import Receiver

Email = OutboundEmail.Status
Status = PromotionRequest.Status


@pytest.fixture
def people(requester, reviewer, reviewer2):
    for user, address in (
        (requester, "riley@example.com"),
        (reviewer, "rex@example.com"),
        (reviewer2, "rita@example.com"),
    ):
        user.email = address
        user.save()
    return requester, reviewer, reviewer2


@pytest.fixture
def make_requester(db):
    def make(username, address):
        return make_user(username, roles.REQUESTERS, email=address)

    return make


@pytest.fixture
def prefix():
    # The MLflow server is shared by the whole session: only this test's models are filed.
    return f"digest_{uuid.uuid4().hex[:8]}_"


def automatic_staging():
    staging = stage("Staging")
    staging.required_approvals = 0
    staging.checks = ""
    staging.save()
    return staging


def run_email_tasks() -> list[int]:
    """Take every task published since the broker was emptied off the notification queue and
    run the e-mail ones here, as a worker would; returns the e-mails they were published for."""
    ran = []
    with celery_app.connection_for_read() as connection:
        queue = connection.SimpleQueue("notify")
        try:
            while True:
                try:
                    message = queue.get(timeout=1)
                except queue.Empty:
                    return ran
                name, args = message.headers["task"], message.payload[0]
                message.ack()
                if name == notifications.EMAIL_TASK and OutboundEmail.objects.filter(pk=args[0]).exists():
                    celery_app.tasks[name].apply(args=args, throw=True)
                    ran.append(args[0])
        finally:
            queue.close()


@pytest.fixture
def broker():
    try:
        purge_broker()
    except Exception:  # noqa: BLE001 - an empty or new queue cannot be purged on every transport
        pass
    return run_email_tasks


def bulk_on_mirror(requester, count: int, *, target: str = "Staging", current: str = "None"):
    """`count` requests filed as one bulk on mirrored models (no MLflow): the outbox's part."""
    bulk_id = uuid.uuid4()
    tag = bulk_id.hex[:6]
    with notifications.emails_held():
        filed = [
            services.promotion_request_create(
                version=version(mirror_model(f"m{index:03}_{tag}", {1: {"current_stage": current}}), 1),
                stage=stage(target),
                requested_by=requester,
                justification="nightly retrain",
                bulk_id=bulk_id,
            )
            for index in range(count)
        ]
    return bulk_id, filed


def rows(bulk_id, event):
    return OutboundEmail.objects.filter(bulk_id=bulk_id, event=event).order_by("pk")


# --- filed in bulk ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_bulk_mails_each_approver_one_message_listing_every_request_and_the_requester_none(
    registry, people, prefix, broker, mailoutbox, django_capture_on_commit_callbacks
):
    client = registry.client()
    names = [f"{prefix}{index:02}" for index in range(30)]
    for name in names:
        make_version(client, name, run=False)

    with django_capture_on_commit_callbacks(execute=True):
        outcome = services.promotion_requests_create_passing(
            stage=stage("Staging"), requested_by=people[0], justification="nightly", model_names=names
        )

    assert len(outcome.filed) == 30
    (bulk_id,) = {request.bulk_id for request in outcome.filed}
    assert bulk_id is not None
    created = rows(bulk_id, "request.created")
    assert created.count() == 30
    # One task for the bulk's event, published once the last request was filed.
    assert broker() == [created.first().pk]
    assert sorted(mail.to[0] for mail in mailoutbox) == ["rex@example.com", "rita@example.com"]
    for mail in mailoutbox:
        assert mail.subject == "[Promotions] Review requested: 30 requests → Staging"
        assert all(f"{name} v1 → Staging (#" in mail.body for name in names)
        assert all(f"/requests/{request.pk}/" in mail.body for request in outcome.filed)
        assert "Justification:\nnightly" in mail.body
    assert set(created.values_list("status", flat=True)) == {Email.SENT}

    # Published again, for every row (the sweeper's copies, a redelivery): nothing more is sent.
    for email in created:
        assert notifications.send_email.apply(args=[email.pk]).get() == "skipped"
    assert len(mailoutbox) == 2


@pytest.mark.django_db
def test_a_request_filed_alone_gets_todays_message(people, mailoutbox):
    requester, _, _ = people
    model = mirror_model(versions={1: {"current_stage": "None"}})
    request = services.promotion_request_create(
        version=version(model, 1), stage=stage("Staging"), requested_by=requester, justification="x"
    )
    email = OutboundEmail.objects.get()
    assert (email.event, email.bulk_id, request.bulk_id) == ("request.created", None, None)

    assert notifications.email_send(email_pk=email.pk).status == Email.SENT

    assert (
        sorted(mail.subject for mail in mailoutbox)
        == [f"[Promotions] Review requested: {model.name} v1 → Staging (#{request.pk})"] * 2
    )


@pytest.mark.django_db
def test_a_bulk_of_one_and_a_recipient_concerned_by_one_request_get_the_single_message(
    people, make_requester, mailoutbox
):
    riley = people[0]
    bulk_id, (only,) = bulk_on_mirror(riley, 1)
    (email,) = rows(bulk_id, "request.created")
    notifications.email_send(email_pk=email.pk)
    assert {mail.subject for mail in mailoutbox} == {
        f"[Promotions] Review requested: {only.version.model.name} v1 → Staging (#{only.pk})"
    }

    # Applied events of three requests, two of them Riley's, one Robin's: one digest, one single.
    mailoutbox.clear()
    robin = make_requester("robin", "robin@example.com")
    _, mine = bulk_on_mirror(riley, 2)
    _, (theirs,) = bulk_on_mirror(robin, 1)
    sent = notifications.events_email_send(
        event="promotion.applied", request_ids=[r.pk for r in [*mine, theirs]]
    )
    assert sent == 2
    by_address = {mail.to[0]: mail for mail in mailoutbox}
    assert by_address["riley@example.com"].subject == "[Promotions] Applied: 2 requests → Staging"
    assert all(f"(#{r.pk})" in by_address["riley@example.com"].body for r in mine)
    assert by_address["robin@example.com"].subject == (
        f"[Promotions] Applied: {theirs.version.model.name} v1 → Staging (#{theirs.pk})"
    )


@pytest.mark.django_db
def test_a_digest_lists_so_many_requests_then_links_to_the_rest(people, mailoutbox, monkeypatch):
    monkeypatch.setattr(notifications, "DIGEST_LINES", 3)
    bulk_id, filed = bulk_on_mirror(people[0], 5)
    notifications.email_send(email_pk=rows(bulk_id, "request.created").first().pk)

    body = mailoutbox[0].body
    assert mailoutbox[0].subject == "[Promotions] Review requested: 5 requests → Staging"
    assert [f"(#{r.pk})" in body for r in filed] == [True, True, True, False, False]
    assert "… and 2 more: http://127.0.0.1:8000/?tab=mine&stage=Staging" in body


# --- the claim --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_attempts_at_once_at_the_same_bulk_send_it_once(people, mailoutbox):
    bulk_id, _ = bulk_on_mirror(people[0], 10)
    first, second = rows(bulk_id, "request.created")[:2]
    barrier = threading.Barrier(2)
    outcomes = {}

    def attempt(pk):
        try:
            barrier.wait()
            outcomes[pk] = notifications.email_send(email_pk=pk)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=attempt, args=(pk,)) for pk in (first.pk, second.pk)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    statuses = sorted(str(outcome and outcome.status) for outcome in outcomes.values())
    assert statuses == ["None", Email.SENT]
    assert sorted(mail.to[0] for mail in mailoutbox) == ["rex@example.com", "rita@example.com"]
    assert set(rows(bulk_id, "request.created").values_list("status", "attempts")) == {(Email.SENT, 1)}


@pytest.mark.django_db
def test_a_bulk_the_mail_server_refuses_is_retried_and_sent_together(people, settings, mailoutbox):
    bulk_id, _ = bulk_on_mirror(people[0], 4)
    created = rows(bulk_id, "request.created")
    backend = settings.EMAIL_BACKEND
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 2

    refused = notifications.email_send(email_pk=created.last().pk)

    assert refused.status == Email.PENDING and refused.retry_in
    assert set(created.values_list("status", "attempts")) == {(Email.PENDING, 1)}
    settings.EMAIL_BACKEND = backend
    assert notifications.email_send(email_pk=created.last().pk).status == Email.SENT
    assert set(created.values_list("status", "attempts")) == {(Email.SENT, 2)}
    assert len(mailoutbox) == 2


@pytest.mark.django_db
def test_an_attempt_taken_over_at_a_bulk_writes_nothing_after(people, settings, mailoutbox):
    bulk_id, _ = bulk_on_mirror(people[0], 3)
    created = rows(bulk_id, "request.created")
    dead = timezone.now() - timedelta(seconds=settings.EMAIL_STUCK_AFTER_SECONDS + 1)
    stale_claim = uuid.uuid4()
    created.update(status=Email.SENDING, attempts=1, last_attempt_at=dead, claim=stale_claim)

    assert sorted(notifications.emails_sweep()) == sorted(created.values_list("pk", flat=True))
    assert notifications.email_send(email_pk=created.first().pk).status == Email.SENT
    assert len(mailoutbox) == 2  # one digest each, for the whole bulk
    assert not created.filter(claim=stale_claim).exists()
    assert set(created.values_list("status", "attempts")) == {(Email.SENT, 2)}
    for email in created:
        assert notifications.email_send(email_pk=email.pk) is None
    assert len(mailoutbox) == 2


@pytest.mark.django_db
def test_the_send_of_a_bulk_costs_the_same_queries_however_many_requests(
    people, mailoutbox, django_assert_num_queries
):
    small, _ = bulk_on_mirror(people[0], 3)
    large, _ = bulk_on_mirror(people[0], 40)

    # The row; the claim; the claimed rows; the requests; the approvers; marked sent.
    for bulk_id in (small, large):
        first = rows(bulk_id, "request.created").first()
        with django_assert_num_queries(6):
            notifications.email_send(email_pk=first.pk)
    assert len(mailoutbox) == 4
    assert mailoutbox[-1].subject == "[Promotions] Review requested: 40 requests → Staging"


# --- applied events wait for the rest of their bulk -------------------------------------------


def applied_in_bulk(requester, count):
    """A bulk auto-approved to Staging; all but the last request applied (as the worker records
    it: the status and the event's e-mail in one transaction)."""
    automatic_staging()
    bulk_id, filed = bulk_on_mirror(requester, count)
    assert {request.status for request in filed} == {Status.APPROVED}
    for request in filed[:-1]:
        with transaction.atomic():
            PromotionRequest.objects.filter(pk=request.pk).update(status=Status.APPLIED)
            notifications.notify("promotion.applied", request.pk)
    # The filing's own e-mails are sent (nobody is told of created, one Approved digest).
    for event in ("request.created", "request.approved"):
        notifications.email_send(email_pk=rows(bulk_id, event).first().pk)
    return bulk_id, filed


@pytest.mark.django_db
def test_an_applied_digest_waits_for_the_bulk_still_applying_and_the_sweeper_leaves_it_alone(
    people, settings, mailoutbox
):
    settings.EMAIL_BULK_GATHER_SECONDS = 3600
    bulk_id, filed = applied_in_bulk(people[0], 4)
    assert [mail.subject for mail in mailoutbox] == ["[Promotions] Approved: 4 requests → Staging"]
    mailoutbox.clear()
    applied = rows(bulk_id, "promotion.applied")
    # Recorded long enough ago that the sweeper would publish them, were nobody waiting on them.
    applied.update(created_at=timezone.now() - timedelta(seconds=settings.EMAIL_STUCK_AFTER_SECONDS + 10))
    first, *others = applied

    waiting = notifications.email_send(email_pk=first.pk)
    assert waiting.status == Email.PENDING and 0 < waiting.retry_in <= notifications.EMAIL_BULK_POLL_SECONDS
    assert [notifications.email_send(email_pk=email.pk) for email in others] == [None, None]
    assert mailoutbox == []
    # The waiting attempt renews the group: the sweeper publishes none of it meanwhile, and
    # all of it once the renewals stop.
    assert notifications.emails_sweep() == []
    later = timezone.now() + timedelta(seconds=settings.EMAIL_STUCK_AFTER_SECONDS + 1)
    assert sorted(notifications.emails_sweep(now=later)) == [email.pk for email in applied]

    # The last request is applied: the next poll sends one digest of all four.
    with transaction.atomic():
        PromotionRequest.objects.filter(pk=filed[-1].pk).update(status=Status.APPLIED)
        notifications.notify("promotion.applied", filed[-1].pk)
    assert notifications.email_send(email_pk=first.pk).status == Email.SENT
    (mail,) = mailoutbox
    assert (mail.to, mail.subject) == (["riley@example.com"], "[Promotions] Applied: 4 requests → Staging")
    assert all(f"(#{request.pk})" in mail.body for request in filed)
    assert set(applied.values_list("status", flat=True)) == {Email.SENT}


@pytest.mark.django_db
def test_an_applied_digest_goes_out_after_the_bound_with_a_request_stuck_in_approved(
    people, settings, mailoutbox
):
    settings.EMAIL_BULK_GATHER_SECONDS = 30
    bulk_id, filed = applied_in_bulk(people[0], 3)
    mailoutbox.clear()
    applied = rows(bulk_id, "promotion.applied")
    assert notifications.email_send(email_pk=applied.first().pk).retry_in is not None

    # The first applied e-mail was recorded longer ago than the bound: the digest goes without
    # the request that is still approved.
    applied.update(created_at=timezone.now() - timedelta(seconds=31))
    assert notifications.email_send(email_pk=applied.first().pk).status == Email.SENT
    (mail,) = mailoutbox
    assert mail.subject == "[Promotions] Applied: 2 requests → Staging"
    assert f"(#{filed[-1].pk})" not in mail.body
    assert PromotionRequest.objects.get(pk=filed[-1].pk).status == Status.APPROVED


@pytest.mark.django_db
def test_a_request_waiting_for_reviewers_does_not_hold_the_digest_once_the_bulk_is_filed(people, mailoutbox):
    bulk_id, filed = bulk_on_mirror(people[0], 3)  # Staging needs approvals: all pending
    for request in filed[:2]:
        with transaction.atomic():
            PromotionRequest.objects.filter(pk=request.pk).update(status=Status.APPLIED)
            notifications.notify("promotion.applied", request.pk)
    # Its request.created e-mails unsent, the bulk may still be being filed: the digest waits.
    first_applied = rows(bulk_id, "promotion.applied").first()
    assert notifications.email_send(email_pk=first_applied.pk).retry_in is not None
    notifications.email_send(email_pk=rows(bulk_id, "request.created").first().pk)
    mailoutbox.clear()

    assert notifications.email_send(email_pk=rows(bulk_id, "promotion.applied").first().pk).status == (
        Email.SENT
    )
    assert [mail.subject for mail in mailoutbox] == ["[Promotions] Applied: 2 requests → Staging"]


# --- a real worker ----------------------------------------------------------------------------


def mails_in(directory) -> list:
    """The messages the file backend wrote: one file per connection, messages split by a rule."""
    found = []
    for path in sorted(directory.glob("*.log")) if directory.exists() else []:
        for chunk in path.read_bytes().split(b"-" * 79):
            if chunk.strip():
                found.append(message_from_bytes(chunk.strip(b"\n") + b"\n", policy=policy.default))
    return found


@pytest.mark.django_db(transaction=True)
def test_an_automatic_bulk_applied_by_the_worker_mails_the_requester_one_digest_and_every_webhook(
    registry, people, prefix, worker_factory, tmp_path
):
    automatic_staging()
    count = 20
    names = [f"{prefix}{index:02}" for index in range(count)]
    for name in names:
        make_version(registry.client(), name, run=False)
    target = Receiver()
    mail_dir = tmp_path / "mail"
    try:
        WebhookEndpoint.objects.create(
            name="ci", url=target.url, secret="bulk-secret-for-tests", events=["promotion.applied"]
        )
        mail = {
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(mail_dir),
        }
        # Applies one at a time, e-mails beside them at once: the first applied e-mail is ready
        # to go while most of the bulk is still being applied.
        worker = worker_factory(options=("-Q", "apply", "--concurrency", "1"), **mail)
        worker_factory(options=("-Q", "notify,sync"), **mail)

        outcome = services.promotion_requests_create_passing(
            stage=stage("Staging"), requested_by=people[0], justification="nightly", model_names=names
        )
        assert len(outcome.filed) == count
        bulk_id = outcome.filed[0].bulk_id

        def settled():
            requests = PromotionRequest.objects.filter(bulk_id=bulk_id)
            emails = OutboundEmail.objects.filter(bulk_id=bulk_id)
            return (
                requests.filter(status=Status.APPLIED).count() == count
                and emails.filter(event="promotion.applied").count() == count
                and not emails.exclude(status=Email.SENT).exists()
            )

        wait_until(settled, timeout=120, message=f"the bulk applied and mailed\n{worker.log()[-3000:]}")
        subjects = sorted(str(mail["Subject"]).strip() for mail in mails_in(mail_dir))
        assert subjects == [
            f"[Promotions] Applied: {count} requests → Staging",
            f"[Promotions] Approved: {count} requests → Staging",
        ]
        assert all(str(mail["To"]) == "riley@example.com" for mail in mails_in(mail_dir))
        wait_until(
            lambda: OutboundDelivery.objects.filter(status="delivered").count() == count,
            timeout=60,
            message="a delivery per applied request",
        )
        assert len(target.calls) == count
        assert len({headers["X-Promotion-Delivery-Id"] for headers, _ in target.calls}) == count
    finally:
        target.close()
