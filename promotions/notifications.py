"""E-mail and signed outbound webhooks for the events of the workflow.

`notify(event, request_id)` is called by the services inside the transaction that writes the
event's audit entry. It records the e-mail (`OutboundEmail`) and one `OutboundDelivery` per
endpoint that wants the event (the outbox: the rows commit or roll back with the event) and,
once the transaction commits, enqueues them; a sweeper publishes again whatever a broker outage
or a dead worker left behind. Nothing here runs in the web request: a slow mail server or a
webhook target that hangs only ever delays a worker thread, for at most the configured timeout,
and never the request that caused the event.

The e-mails of a bulk's requests (`PromotionRequest.bulk_id`) are claimed and sent together,
one message per recipient for each event (`email_send`); webhooks stay one delivery per event.
"""

from __future__ import annotations

import http.client
import json
import logging
import smtplib
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode

from celery import shared_task
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mass_mail
from django.db import transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from common.redact import redact, url_password
from promotions import audit, catalog, outbox, policy, roles, selectors, webhook_targets
from promotions.models import (
    REGISTRY_EVENTS,
    WEBHOOK_EVENTS,
    AuditEvent,
    DriftRevert,
    ManifestState,
    OutboundDelivery,
    OutboundEmail,
    PromotionRequest,
    Review,
    WebhookEndpoint,
)
from promotions.templatetags.promotions_tags import duration
from registry_sync.models import DriftEvent
from registry_sync.webhooks import sign

logger = logging.getLogger(__name__)
Delivery = OutboundDelivery.Status
Email = OutboundEmail.Status

DELIVERY_HEADER = "X-Promotion-Delivery-Id"
TIMESTAMP_HEADER = "X-Promotion-Timestamp"
SIGNATURE_HEADER = "X-Promotion-Signature"
EMAIL_TASK = "promotions.send_email"
DELIVERY_TASK = "promotions.deliver_webhook"

# Not a webhook event: the daily reminder of an emergency change's review, by e-mail only.
RETROSPECTIVE_OVERDUE = "review.retrospective_overdue"
# Both go to every approver of the stage and every auditor (services/emergency.py).
_EMERGENCY_EVENTS = ("promotion.emergency", RETROSPECTIVE_OVERDUE)

_VERBS = {
    "request.created": "Requested",
    "request.escalated": "Escalated",
    "request.approved": "Approved",
    "request.rejected": "Rejected",
    "request.cancelled": "Cancelled",
    "request.expired": "Expired",
    "promotion.applied": "Applied",
    "promotion.failed": "Failed",
    "promotion.emergency": "Emergency change",
    RETROSPECTIVE_OVERDUE: "Retrospective review overdue",
    "registry.drift": "Drift",
    "registry.reverted": "Reverted",
    "registry.revert_failed": "Revert failed",
}


# --- the hook the services call ---------------------------------------------------------------


def notify(event: str, request_id: int) -> None:
    """Record the e-mail and the webhook deliveries of `event`; send them after commit."""
    if event not in WEBHOOK_EVENTS or event in REGISTRY_EVENTS:
        raise ValueError(f"unknown event {event!r}; known: {', '.join(WEBHOOK_EVENTS)}")
    # Recipients are worked out when it is sent: the row says what to send, not to whom.
    bulk_id = PromotionRequest.objects.filter(pk=request_id).values_list("bulk_id", flat=True).first()
    email_record(OutboundEmail.Kind.EVENT, bulk_id=bulk_id, event=event, request_id=request_id)
    _deliveries_record(
        event,
        lambda: event_payload(
            event, PromotionRequest.objects.select_related("version__model", "stage").get(pk=request_id)
        ),
        request_id=request_id,
    )


def retrospective_overdue_notify(request_id: int) -> None:
    """Record the reminder that an emergency change's retrospective review is overdue."""
    email_record(OutboundEmail.Kind.EVENT, event=RETROSPECTIVE_OVERDUE, request_id=request_id)


def notify_registry(event: str, drift_event_id: int) -> None:
    """The model-level twin of `notify`: a binding changed outside the workflow (`registry.drift`),
    and what enforcement did about it (`registry.reverted`, `registry.revert_failed`)."""
    if event not in REGISTRY_EVENTS:
        raise ValueError(f"unknown registry event {event!r}; known: {', '.join(REGISTRY_EVENTS)}")
    email_record(OutboundEmail.Kind.REGISTRY, event=event, drift_event_id=drift_event_id)
    _deliveries_record(
        event,
        lambda: registry_payload(event, DriftEvent.objects.select_related("model").get(pk=drift_event_id)),
        request_id=None,
    )


def _deliveries_record(event: str, payload_of, *, request_id: int | None) -> None:
    endpoints = [
        endpoint for endpoint in WebhookEndpoint.objects.filter(is_active=True) if endpoint.wants(event)
    ]
    delivery_pks: list[int] = []
    if endpoints:
        payload = payload_of()
        now = timezone.now()
        for endpoint in endpoints:
            delivery = OutboundDelivery.objects.create(
                endpoint=endpoint,
                event=event,
                request_id=request_id,
                payload=payload,
                delivery_id=str(uuid.uuid4()),
                created_at=now,
            )
            delivery_pks.append(delivery.pk)
    if delivery_pks:
        transaction.on_commit(lambda: _enqueue(delivery_pks))


def _enqueue(delivery_pks: list[int]) -> None:
    # A broker outage must not turn a committed decision into an error page: the deliveries
    # are recorded, and the sweeper publishes them later.
    for pk in delivery_pks:
        outbox.publish(DELIVERY_TASK, [pk])


# --- what is said -----------------------------------------------------------------------------


def request_url(request_id: int) -> str:
    return settings.SITE_URL.rstrip("/") + reverse("request_detail", args=[request_id])


def _what(request: PromotionRequest) -> str:
    return f"{request.version.model.name} v{request.version.version} → {request.stage.name}"


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats &, < and > as control characters; model names come from MLflow.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _reason(event: str, request: PromotionRequest) -> str:
    if event in _EMERGENCY_EVENTS:
        return request.emergency_reason
    if event == "request.escalated":
        return _waiting(request)
    if event == "promotion.failed":
        return request.last_error
    if event == "request.rejected":
        review = (
            Review.objects.filter(request=request, decision=Review.Decision.REJECT)
            .order_by("-created_at")
            .first()
        )
        return review.comment if review else ""
    return ""


def event_payload(event: str, request: PromotionRequest) -> dict:
    """The JSON body of a webhook: the event, the request as it stands, and Slack's `text`."""
    url = request_url(request.pk)
    reason = _reason(event, request)
    text = f"{_VERBS[event]}: {_slack_escape(_what(request))} (<{url}|request #{request.pk}>)"
    if reason:
        text += f": {_slack_escape(reason[:500])}"
    payload = {
        "event": event,
        "occurred_at": audit.utc_iso(timezone.now()),
        "text": text,
        "request": {
            "id": request.pk,
            "status": request.status,
            "model_name": request.version.model.name,
            "version": request.version.version,
            "stage": request.stage.name,
            "source_stage": request.source_stage,
            "requested_by": request.requested_by_name,
            "justification": request.justification,
            "via": request.via,
            "reason": reason,
            "url": url,
        },
    }
    if request.is_emergency:
        payload["request"]["emergency"] = {
            "by": request.emergency_by_name,
            "at": audit.utc_iso(request.emergency_at),
            "reason": request.emergency_reason,
            "review_due_at": audit.utc_iso(request.review_due_at),
        }
    return payload


def model_url(name: str) -> str:
    return settings.SITE_URL.rstrip("/") + reverse("model_detail", args=[name])


def _binding(event: DriftEvent) -> str:
    return (
        f"stage {event.after or event.before}" if event.kind == DriftEvent.Kind.STAGE else f"@{event.alias}"
    )


def registry_payload(event: str, drift: DriftEvent) -> dict:
    """The JSON body of a model-level webhook: the change, and what enforcement did about it."""
    revert = DriftRevert.objects.filter(drift_event=drift).first()
    url = model_url(drift.model.name)
    what = _slack_escape(f"{drift.model.name} {drift.describe()}")
    text = f"{_VERBS[event]}: {what} (<{url}|model>)"
    if revert is not None and revert.last_error and event == "registry.revert_failed":
        text += f": {_slack_escape(revert.last_error[:500])}"
    return {
        "event": event,
        "occurred_at": audit.utc_iso(timezone.now()),
        "text": text,
        "model": {"name": drift.model.name, "url": url},
        "drift": {
            "id": drift.pk,
            "kind": drift.kind,
            "version": drift.version,
            "stage": drift.after if drift.kind == DriftEvent.Kind.STAGE else "",
            "alias": drift.alias,
            "before": drift.before,
            "after": drift.after,
            "description": drift.describe(),
            "detected_at": audit.utc_iso(drift.detected_at),
        },
        "revert": None
        if revert is None
        else {
            "status": revert.status,
            "stages": revert.stages,
            "restored": revert.changes,
            "reason": revert.last_error if event == "registry.revert_failed" else "",
        },
    }


def registry_email_send(*, event: str, drift_event_id: int) -> int:
    """Tell the admins and approvers of the stages a binding change touched."""
    drift = DriftEvent.objects.select_related("model").filter(pk=drift_event_id).first()
    if drift is None:
        return 0
    stages = catalog.drift_stages(drift)
    users = get_user_model().objects.filter(is_active=True).exclude(email="")
    users = users.filter(
        Q(groups__name=roles.STAGE_ADMINS)
        | Q(groups__in=[g for s in stages for g in s.approver_groups.all()])
    ).distinct()
    addresses = sorted({user.email for user in users})
    if not addresses:
        return 0
    payload = registry_payload(event, drift)
    subject = " ".join(f"[Promotions] {_VERBS[event]}: {drift.model.name} {_binding(drift)}".split())
    lines = [f"{_VERBS[event]}: {drift.model.name} {drift.describe()}."]
    if payload["revert"] and payload["revert"]["restored"]:
        lines += ["", "Put back:"] + [f"  - {change}" for change in payload["revert"]["restored"]]
    if payload["revert"] and payload["revert"]["reason"]:
        lines += ["", f"Reason: {payload['revert']['reason']}"]
    lines += ["", f"Open it: {payload['model']['url']}"]
    body = "\n".join(lines) + "\n"
    return send_mass_mail(
        [(subject, body, settings.DEFAULT_FROM_EMAIL, [address]) for address in addresses],
        fail_silently=False,
    )


# --- e-mail -----------------------------------------------------------------------------------


def _waiting(request: PromotionRequest) -> str:
    """'waiting 3 days (Production escalates after 2 days)': the words of an escalation."""
    waited = duration(timezone.now() - request.created_at)
    after = request.stage.escalate_after
    return f"waiting {waited}" + (
        f" ({request.stage.name} escalates after {duration(after)})" if after else ""
    )


def _stage_admin_addresses() -> list[str]:
    users = get_user_model().objects.filter(is_active=True, groups__name=roles.STAGE_ADMINS).exclude(email="")
    return sorted({user.email for user in users})


def _approver_addresses(request: PromotionRequest) -> list[str]:
    users = (
        get_user_model()
        .objects.filter(is_active=True, groups__in=request.stage.approver_groups.all())
        .exclude(email="")
        .distinct()
    )
    if request.requested_by_id is not None:
        users = users.exclude(pk=request.requested_by_id)
    return sorted({user.email for user in users})


def _requester_address(event: str, request: PromotionRequest) -> list[str]:
    requester = request.requested_by
    if requester is None or not requester.is_active or not requester.email:
        return []
    if event == "request.cancelled":
        cancelled_by = (
            AuditEvent.objects.filter(request_id=request.pk, action="request.cancelled")
            .values_list("actor_id", flat=True)
            .first()
        )
        if cancelled_by == requester.pk:
            return []  # they know: they did it
    return [requester.email]


def _emergency_addresses(request: PromotionRequest) -> list[str]:
    """Every active approver of the stage and every auditor, but whoever broke the glass."""
    users = (
        get_user_model()
        .objects.filter(is_active=True)
        .filter(Q(groups__in=request.stage.approver_groups.all()) | Q(groups__name=roles.AUDITORS))
        .exclude(email="")
        .distinct()
    )
    if request.emergency_by_id is not None:
        users = users.exclude(pk=request.emergency_by_id)
    return sorted({user.email for user in users})


def event_recipients(event: str, request: PromotionRequest) -> list[str]:
    """Approvers hear about new requests that wait for them, the stage admins about requests that
    wait too long (escalated); the requester hears the rest. Emergency changes, and their overdue
    reviews, go to the approvers and the auditors."""
    if event in _EMERGENCY_EVENTS:
        return _emergency_addresses(request)
    if event == "request.created":
        return _approver_addresses(request) if policy.required_approvals(request) > 0 else []
    if event == "request.escalated":
        return _stage_admin_addresses()
    return _requester_address(event, request)


def _subject(event: str, request: PromotionRequest) -> str:
    what = _what(request)
    if event == "request.created":
        subject = f"Review requested: {what} (#{request.pk})"
    else:
        subject = f"{_VERBS[event]}: {what} (#{request.pk})"
    return " ".join(f"[Promotions] {subject}".split())  # no line breaks in a header


def _body(event: str, request: PromotionRequest) -> str:
    lines = [
        f"{_VERBS[event]}: promote {request.version.model.name} v{request.version.version} "
        f"from {request.source_stage or 'no stage'} to {request.stage.name}.",
        "",
        f"Request #{request.pk}, filed by {request.requested_by_name}, "
        f"is now {request.get_status_display()}.",
    ]
    if event in _EMERGENCY_EVENTS:
        lines += [
            "",
            f"EMERGENCY CHANGE by {request.emergency_by_name}: applied without approvals.",
            f"A retrospective review by {request.reviews_required} approver"
            f"{'s' if request.reviews_required != 1 else ''} is due by "
            f"{audit.utc_iso(request.review_due_at)} (UTC).",
        ]
    if event == "request.created":
        lines += ["", "Justification:", request.justification]
        failing = [r["rule"] for r in request.check_results if not r.get("passed")]
        total = len(request.check_results)
        lines += ["", f"Checks: {total - len(failing)} of {total} pass."]
        lines += [f"  failing: {rule}" for rule in failing]
    reason = _reason(event, request)
    if reason:
        lines += ["", f"Reason: {reason}"]
    lines += ["", f"Open it: {request_url(request.pk)}"]
    return "\n".join(lines) + "\n"


def event_email_send(*, event: str, request_id: int) -> int:
    """Send the e-mail of one event; returns how many messages went out."""
    request = (
        PromotionRequest.objects.select_related("version__model", "stage", "requested_by")
        .filter(pk=request_id)
        .first()
    )
    if request is None:
        return 0
    recipients = event_recipients(event, request)
    if not recipients:
        return 0
    subject, body = _subject(event, request), _body(event, request)
    # One message per person: approvers do not see each other's addresses.
    messages = [(subject, body, settings.DEFAULT_FROM_EMAIL, [address]) for address in recipients]
    return send_mass_mail(messages, fail_silently=False)


# --- e-mail of a bulk: one digest per recipient ------------------------------------------------

# A digest lists at most this many requests, then links to the rest.
DIGEST_LINES = 200


def _recipients_key(event: str, request: PromotionRequest):
    """What `event_recipients` depends on for `request`: requests with the same key have the same
    recipients, so a bulk's recipients cost a query or two, not a query or two per request."""
    if event in _EMERGENCY_EVENTS or event == "request.cancelled":
        return request.pk
    if event == "request.created":
        return (request.stage_id, request.requested_by_id, policy.required_approvals(request) > 0)
    if event == "request.escalated":
        return ()
    return request.requested_by_id


def _digest_subject(event: str, requests: list[PromotionRequest]) -> str:
    verb = "Review requested" if event == "request.created" else _VERBS[event]
    stages = ", ".join(sorted({request.stage.name for request in requests}))
    return " ".join(f"[Promotions] {verb}: {len(requests)} requests → {stages}".split())


def _more_url(event: str, requests: list[PromotionRequest]) -> str:
    query = {"tab": "mine"} if event == "request.created" else {"tab": "recent"}
    stages = {request.stage.name for request in requests}
    if len(stages) == 1:
        query["stage"] = stages.pop()
    return settings.SITE_URL.rstrip("/") + reverse("queue") + "?" + urlencode(query)


def _digest_body(event: str, requests: list[PromotionRequest]) -> str:
    first = requests[0]
    verb = "Review requested" if event == "request.created" else _VERBS[event]
    lines = [f"{verb}: {len(requests)} requests filed together by {first.requested_by_name}.", ""]
    for request in requests[:DIGEST_LINES]:
        line = f"  - {_what(request)} (#{request.pk}): {request_url(request.pk)}"
        if event == "promotion.failed" and request.last_error:
            line += f"\n      Reason: {request.last_error[:300]}"
        lines.append(line)
    if len(requests) > DIGEST_LINES:
        lines.append(f"  … and {len(requests) - DIGEST_LINES} more: {_more_url(event, requests)}")
    if event == "request.created":
        lines += ["", "Justification:", first.justification]
    return "\n".join(lines) + "\n"


def events_email_send(*, event: str, request_ids: list[int]) -> int:
    """Send the e-mail of one event of many requests (a bulk's): one message per recipient,
    listing the requests that concern them; a recipient concerned by one gets its own message.
    Returns how many messages went out."""
    requests = selectors.with_tier_rules(
        list(
            PromotionRequest.objects.select_related("version__model", "stage", "requested_by")
            .filter(pk__in=request_ids)
            .order_by("version__model__name", "pk")
        )
    )
    recipients: dict = {}
    concerning: dict[str, list[PromotionRequest]] = {}
    for request in requests:
        key = _recipients_key(event, request)
        if key not in recipients:
            recipients[key] = event_recipients(event, request)
        for address in recipients[key]:
            concerning.setdefault(address, []).append(request)
    # Recipients told of the same requests get the same message, written once.
    written: dict[tuple[int, ...], tuple[str, str]] = {}
    messages = []
    for address, theirs in sorted(concerning.items()):
        pks = tuple(request.pk for request in theirs)
        if pks not in written:
            if len(theirs) == 1:
                written[pks] = _subject(event, theirs[0]), _body(event, theirs[0])
            else:
                written[pks] = _digest_subject(event, theirs), _digest_body(event, theirs)
        subject, body = written[pks]
        messages.append((subject, body, settings.DEFAULT_FROM_EMAIL, [address]))
    return send_mass_mail(messages, fail_silently=False) if messages else 0


# --- the catalog's policy, lowered -------------------------------------------------------------


def policy_lowered_notify(*, stage_name: str, lowered: list[str], actor_id: int | None) -> None:
    """Record the e-mail that tells the other stage admins and the auditors that a stage asks
    for less; it is sent after commit."""
    email_record(OutboundEmail.Kind.POLICY_LOWERED, stage_name=stage_name, lowered=lowered, actor_id=actor_id)


def policy_lowered_email_send(*, stage_name: str, lowered: list[str], actor_id: int | None) -> int:
    users = get_user_model().objects.filter(
        is_active=True, groups__name__in=(roles.STAGE_ADMINS, roles.AUDITORS)
    )
    addresses = sorted({u.email for u in users.exclude(pk=actor_id) if u.email})
    if not addresses:
        return 0
    actor = get_user_model().objects.filter(pk=actor_id).first()
    who = audit.printed_name(actor)
    subject = f"[promotions] {stage_name}: policy lowered by {who}"
    body = (
        f"{who} changed the stage {stage_name} so that it asks for less:\n\n"
        + "".join(f"  - {line}\n" for line in lowered)
        + f"\nThe change is in the audit log: {settings.SITE_URL}{reverse('audit_log')}"
        + "?action=stage.changed\n"
    )
    return send_mass_mail(
        [(subject, body, settings.DEFAULT_FROM_EMAIL, [address]) for address in addresses],
        fail_silently=False,
    )


# --- the e-mail outbox ------------------------------------------------------------------------

# What each kind of recorded e-mail calls with its payload; each returns the messages sent.
_EMAIL_SENDS = {
    OutboundEmail.Kind.EVENT: event_email_send,
    OutboundEmail.Kind.POLICY_LOWERED: policy_lowered_email_send,
    OutboundEmail.Kind.REGISTRY: registry_email_send,
}
# Retries wait 5 s, 10 s, 20 s… (jittered), at most a third of the stuck time so that the
# sweeper never races a retry.
EMAIL_RETRY_BASE_SECONDS = 5


@dataclass(frozen=True)
class EmailAttempt:
    status: str
    sent: int
    error: str = ""
    retry_in: float | None = None


# A bulk's e-mail of these events waits, after its first row is recorded, while another
# request of the bulk is on its way to the same event: short-lived states only (a request that
# waits for reviewers or for a deployment window may wait for days), and at most
# EMAIL_BULK_GATHER_SECONDS. The first row's task waits, polling this often; the others leave
# their rows to it.
_ON_THE_WAY = {
    "request.approved": Q(status=PromotionRequest.Status.PENDING, manifest_state=ManifestState.COMPUTING),
    "promotion.applied": Q(status__in=(PromotionRequest.Status.APPROVED, PromotionRequest.Status.APPLYING))
    | Q(status=PromotionRequest.Status.PENDING, manifest_state=ManifestState.COMPUTING),
}
_ON_THE_WAY["promotion.failed"] = _ON_THE_WAY["promotion.applied"]
EMAIL_BULK_POLL_SECONDS = 5

# The e-mails recorded while `emails_held` runs: published once it ends, one task per group.
_held: ContextVar[list[OutboundEmail] | None] = ContextVar("held_emails", default=None)


def email_record(kind: str, *, bulk_id: uuid.UUID | None = None, **payload) -> OutboundEmail:
    """Record an e-mail in the caller's transaction and publish its task once that commits."""
    email = OutboundEmail.objects.create(
        kind=kind,
        payload=payload,
        event=payload.get("event", ""),
        bulk_id=bulk_id,
        created_at=timezone.now(),
    )
    held = _held.get()
    if held is not None:
        transaction.on_commit(lambda: held.append(email))
    else:
        transaction.on_commit(lambda: outbox.publish(EMAIL_TASK, [email.pk]))
    return email


@contextmanager
def emails_held() -> Iterator[None]:
    """Record e-mails without publishing them, then publish one task for each bulk's event (and
    one per other e-mail) once everything recorded inside has committed.

    A bulk files its requests in transactions of their own: a task published at the first
    commit would claim that row alone and send it before the rest exist. Should the process
    die before the end, the rows are recorded and the sweeper publishes them.
    """
    held: list[OutboundEmail] = []
    token = _held.set(held)
    try:
        yield
    finally:
        _held.reset(token)
        # After every row's own commit callback, also when an outer transaction holds them all.
        transaction.on_commit(lambda: _publish_groups(held))


def _publish_groups(emails: list[OutboundEmail]) -> None:
    published = set()
    for email in emails:
        group = (email.bulk_id, email.event) if email.bulk_id else email.pk
        if group not in published:
            published.add(group)
            outbox.publish(EMAIL_TASK, [email.pk])


def email_send(*, email_pk: int) -> EmailAttempt | None:
    """One attempt at one recorded e-mail, and at the pending rows of its bulk's event. None when
    there is nothing (left) to send: it was sent, it failed, another attempt is sending it now,
    or the attempt at the bulk's first row sends it.

    The attempt claims its rows first (pending → sending, one compare-and-set UPDATE that marks
    them with the attempt's claim), so a task published twice (by the commit and by the sweeper)
    sends once, and rows claimed together are sent, retried or failed together. An attempt that
    died while sending is taken over after EMAIL_STUCK_AFTER_SECONDS; its messages may then go
    out a second time, which beats losing them.
    """
    email = OutboundEmail.objects.filter(pk=email_pk).first()
    if email is None or email.status in (Email.SENT, Email.FAILED):
        return None
    now = timezone.now()
    if email.bulk_id and email.event in _ON_THE_WAY and email.status == Email.PENDING and not email.attempts:
        waiting = _bulk_gather(email, now)
        if waiting is not False:
            return waiting
    claimable = Q(status=Email.PENDING) | Q(status=Email.SENDING, last_attempt_at__lt=_stuck_before(now))
    if email.attempts >= settings.EMAIL_MAX_ATTEMPTS:
        # Only a row whose last attempt died while sending is still claimable here; the rows that
        # attempt held fail with it.
        died = Q(pk=email.pk, attempts=email.attempts)
        if email.claim:
            died |= Q(claim=email.claim)
        OutboundEmail.objects.filter(died).filter(claimable).update(
            status=Email.FAILED, last_error=email.last_error or "The last attempt did not finish."
        )
        return None
    rows = Q(pk=email.pk, attempts=email.attempts)
    if email.bulk_id:
        rows |= Q(
            kind=email.kind,
            bulk_id=email.bulk_id,
            event=email.event,
            attempts__lt=settings.EMAIL_MAX_ATTEMPTS,
        )
    claim = uuid.uuid4()
    if (
        not OutboundEmail.objects.filter(rows)
        .filter(claimable)
        .update(status=Email.SENDING, attempts=F("attempts") + 1, last_attempt_at=now, claim=claim)
    ):
        return None
    mine = OutboundEmail.objects.filter(claim=claim, status=Email.SENDING)
    claimed = list(mine.only("pk", "kind", "event", "payload", "attempts").order_by("pk"))
    if not claimed:
        return None  # taken over already: that attempt sends them
    attempts = max(row.attempts for row in claimed)
    try:
        sent = _claimed_send(claimed)
    except (OSError, smtplib.SMTPException) as exc:
        # The mail server's words may quote what it was given: redacted like every stored error.
        error = redact(f"{type(exc).__name__}: {exc}")[:500]
        if attempts >= settings.EMAIL_MAX_ATTEMPTS:
            attempt = EmailAttempt(Email.FAILED, 0, error)
        else:
            attempt = EmailAttempt(Email.PENDING, 0, error, retry_in=_email_retry_delay(attempts))
        mine.update(status=attempt.status, last_error=error)
        logger.warning(
            "E-mail #%s (%s, %s rows): %s (attempt %s)", email.pk, email.kind, len(claimed), error, attempts
        )
        return attempt
    mine.update(status=Email.SENT, sent_at=timezone.now(), last_error="")
    return EmailAttempt(Email.SENT, sent)


def _claimed_send(rows: list[OutboundEmail]) -> int:
    if len(rows) == 1:
        return _EMAIL_SENDS[rows[0].kind](**rows[0].payload)
    # Several rows are one bulk's event (the claim groups nothing else).
    return events_email_send(event=rows[0].event, request_ids=[row.payload["request_id"] for row in rows])


def _bulk_on_the_way(email: OutboundEmail) -> bool:
    """Whether more of the bulk's requests may reach `email.event` soon: some are on their way
    to it, or the bulk is still being filed. The requests filed first are applied while the
    rest are filed; their request.created e-mails stay unsent until the filing ends."""
    if PromotionRequest.objects.filter(_ON_THE_WAY[email.event], bulk_id=email.bulk_id).exists():
        return True
    return OutboundEmail.objects.filter(
        bulk_id=email.bulk_id, event="request.created", status__in=(Email.PENDING, Email.SENDING)
    ).exists()


def _bulk_gather(email: OutboundEmail, now) -> EmailAttempt | None | bool:
    """Whether the e-mail of a bulk's event goes now (False), waits for the bulk's requests on
    their way to the event (an attempt to retry), or is left to the bulk's first row (None)."""
    group = OutboundEmail.objects.filter(
        bulk_id=email.bulk_id, event=email.event, status=Email.PENDING, attempts=0
    )
    if group.order_by("pk").values_list("pk", flat=True).first() != email.pk:
        return None
    deadline = email.created_at + timedelta(seconds=settings.EMAIL_BULK_GATHER_SECONDS)
    if now >= deadline:
        return False
    if not _bulk_on_the_way(email):
        return False
    # Seen alive: the sweeper leaves the group to this wait until it stops renewing it.
    group.update(last_attempt_at=now)
    return EmailAttempt(
        Email.PENDING, 0, retry_in=min(EMAIL_BULK_POLL_SECONDS, (deadline - now).total_seconds())
    )


def _stuck_before(now):
    return now - timedelta(seconds=settings.EMAIL_STUCK_AFTER_SECONDS)


def _email_retry_delay(attempts: int) -> float:
    return outbox.backoff_delay(
        attempts - 1, base=EMAIL_RETRY_BASE_SECONDS, cap=settings.EMAIL_STUCK_AFTER_SECONDS / 3
    )


def emails_sweep(*, now=None) -> list[int]:
    """Publish e-mails whose task was never published or got lost (broker down, worker killed)."""
    stuck_before = _stuck_before(now or timezone.now())
    return outbox.sweep(
        OutboundEmail.objects.filter(
            Q(status=Email.PENDING, created_at__lt=stuck_before, last_attempt_at__isnull=True)
            | Q(status__in=(Email.PENDING, Email.SENDING), last_attempt_at__lt=stuck_before)
        ),
        EMAIL_TASK,
    )


@shared_task(bind=True, name=EMAIL_TASK, max_retries=None)
def send_email(self, email_pk: int) -> str:
    # The attempt bound lives in the database (EMAIL_MAX_ATTEMPTS), not in Celery.
    return outbox.task_result(self, email_send(email_pk=email_pk))


@shared_task(name="promotions.sweep_emails")
def sweep_emails() -> int:
    return len(emails_sweep())


# --- webhooks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    status: str
    response_code: int | None
    error: str
    retry_in: float | None = None


def _retry_delay(attempts: int) -> float:
    return outbox.backoff_delay(
        attempts - 1, base=settings.WEBHOOK_RETRY_BASE_SECONDS, cap=settings.WEBHOOK_RETRY_CAP_SECONDS
    )


def _post(delivery: OutboundDelivery) -> tuple[int | None, str]:
    body = json.dumps(delivery.payload, ensure_ascii=False, separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    http_request = urllib.request.Request(  # noqa: S310 - the URL field admits http(s) only
        delivery.endpoint.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "promotions-webhooks/1",
            DELIVERY_HEADER: delivery.delivery_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(delivery.endpoint.secret, delivery.delivery_id, timestamp, body),
        },
    )
    try:
        with webhook_targets.opener.open(http_request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:
            response.read(1024)
            return response.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, redact(f"HTTP {exc.code} {exc.reason}", also=_secrets_of(delivery.endpoint))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        # An endpoint's URL may carry credentials, and the error may quote them (http.client's
        # "nonnumeric port: 'password@host'", for one).
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, webhook_targets.TargetRefused):
            return None, redact(f"Refused: {reason}", also=_secrets_of(delivery.endpoint))[:500]
        return None, redact(f"{type(exc).__name__}: {reason}", also=_secrets_of(delivery.endpoint))[:500]


def _secrets_of(endpoint: WebhookEndpoint) -> tuple[str, str]:
    return url_password(endpoint.url), endpoint.secret


def _permanent(code: int | None) -> bool:
    """4xx other than timeout and rate limiting: retrying will not help until someone fixes it."""
    return code is not None and 300 <= code < 500 and code not in (408, 425, 429)


def webhook_deliver(*, delivery_pk: int) -> Attempt | None:
    """One attempt at one delivery, recorded. None when there is nothing (left) to send."""
    delivery = OutboundDelivery.objects.select_related("endpoint").filter(pk=delivery_pk).first()
    if delivery is None or delivery.status in (Delivery.DELIVERED, Delivery.FAILED):
        return None
    code, error = _post(delivery)
    attempts = delivery.attempts + 1
    now = timezone.now()
    if code is not None and 200 <= code < 300:
        attempt = Attempt(Delivery.DELIVERED, code, "")
    elif attempts >= settings.WEBHOOK_MAX_ATTEMPTS or _permanent(code) or error.startswith("Refused: "):
        attempt = Attempt(Delivery.FAILED, code, error)
    else:
        attempt = Attempt(Delivery.RETRYING, code, error, retry_in=_retry_delay(attempts))
    OutboundDelivery.objects.filter(pk=delivery.pk).update(
        status=attempt.status,
        response_code=code,
        attempts=attempts,
        last_error=attempt.error,
        last_attempt_at=now,
        delivered_at=now if attempt.status == Delivery.DELIVERED else None,
    )
    if attempt.status != Delivery.DELIVERED:
        logger.warning(
            "Webhook delivery %s to %s: %s (attempt %s)",
            delivery.delivery_id,
            delivery.endpoint,
            error,
            attempts,
        )
    return attempt


def delivery_resend(*, delivery: OutboundDelivery) -> OutboundDelivery:
    """Send the same event body again, as a new delivery with its own id and attempts."""
    with transaction.atomic():
        again = OutboundDelivery.objects.create(
            endpoint=delivery.endpoint,
            event=delivery.event,
            request_id=delivery.request_id,
            payload=delivery.payload,
            delivery_id=str(uuid.uuid4()),
            created_at=timezone.now(),
        )
        transaction.on_commit(lambda: outbox.publish(DELIVERY_TASK, [again.pk]))
    return again


def deliveries_sweep(*, now=None) -> list[int]:
    """Publish deliveries whose task was never published or got lost (broker down, worker killed)."""
    now = now or timezone.now()
    stuck_before = now - timedelta(seconds=settings.WEBHOOK_STUCK_AFTER_SECONDS)
    return outbox.sweep(
        OutboundDelivery.objects.filter(
            Q(status=Delivery.PENDING, created_at__lt=stuck_before)
            | Q(status=Delivery.RETRYING, last_attempt_at__lt=stuck_before)
        ),
        DELIVERY_TASK,
    )


@shared_task(bind=True, name=DELIVERY_TASK, max_retries=None)
def deliver_webhook(self, delivery_pk: int) -> str:
    # The attempt bound lives in the database (WEBHOOK_MAX_ATTEMPTS), not in Celery.
    return outbox.task_result(self, webhook_deliver(delivery_pk=delivery_pk))


@shared_task(name="promotions.sweep_deliveries")
def sweep_deliveries() -> int:
    return len(deliveries_sweep())
