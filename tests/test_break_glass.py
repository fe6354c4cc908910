"""Break-glass: a stage admin applies a pending request at once with a reason; the stage's
approvers review it afterwards, and an overdue review is reminded."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from promotions import notifications, roles, selectors, services, tasks, tokens
from promotions.errors import AlreadyDecided, ChecksFailed, InvalidRequest, ManifestPending, NotAllowed
from promotions.models import (
    AuditEvent,
    ManifestState,
    OutboundEmail,
    PromotionRequest,
    RetrospectiveReview,
    Stage,
)
from promotions.services import lifecycle
from tests.conftest import make_user
from tests.factories import mirror_model, stage, version
from tests.test_stage_admin import current_form

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status
REASON = "Production model returns NaN for every EU customer; v5 fixes it."


@pytest.fixture
def pending(requester):
    sales = mirror_model(
        "sales_forecast", {3: {"current_stage": "Production"}, 5: {"current_stage": "Staging"}}
    )
    return services.promotion_request_create(
        version=version(sales, 5), stage=stage("Production"), requested_by=requester, justification="Q3"
    )


@pytest.fixture
def enqueued(monkeypatch):
    """The applies published, instead of a broker."""
    published: list[int] = []
    monkeypatch.setattr(lifecycle, "enqueue_apply", published.append)
    from promotions.services import emergency

    monkeypatch.setattr(emergency, "enqueue_apply", published.append)
    return published


@pytest.fixture
def broken(pending, stage_admin, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        return services.request_break_glass(request=pending, user=stage_admin, reason=REASON)


def web(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api(user) -> Client:
    _, raw = tokens.api_token_create(user=user, name="tests")
    return Client(headers={"Authorization": f"Bearer {raw}"})


def post_json(client, path, body):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def denied(user) -> int:
    return AuditEvent.objects.filter(action="auth.denied", actor_id=user.pk).count()


# --- the service ------------------------------------------------------------------------------


def test_a_stage_admin_applies_a_pending_request_at_once_and_it_is_enqueued(
    pending, stage_admin, enqueued, django_capture_on_commit_callbacks, settings
):
    settings.BREAK_GLASS_REVIEW_HOURS = 24
    with django_capture_on_commit_callbacks(execute=True):
        request = services.request_break_glass(request=pending, user=stage_admin, reason=f"  {REASON}  ")

    assert request.status == Status.APPROVED and request.is_emergency
    assert request.emergency_by == stage_admin and request.emergency_reason == REASON
    assert request.review_due_at == request.emergency_at + timedelta(hours=24)
    assert request.reviews_required == 2  # Production asks for two approvals
    assert enqueued == [request.pk]
    event = AuditEvent.objects.get(action="request.emergency", request_id=request.pk)
    assert event.actor_id == stage_admin.pk and REASON in event.meaning
    assert event.details["reason"] == REASON and event.details["emergency"] is True
    assert not AuditEvent.objects.filter(action="request.approved", request_id=request.pk).exists()


def test_only_a_stage_admin_may_break_the_glass_and_a_refusal_is_audited(pending, reviewer, requester):
    for user in (reviewer, requester):
        with pytest.raises(NotAllowed):
            services.request_break_glass(request=pending, user=user, reason=REASON)
        assert denied(user) == 1
    pending.refresh_from_db()
    assert pending.status == Status.PENDING and not pending.is_emergency


def test_a_requester_who_is_a_stage_admin_may_break_the_glass_on_their_own_request(pending, requester):
    requester.groups.add(Group.objects.get(name=roles.STAGE_ADMINS))
    requester = type(requester).objects.get(pk=requester.pk)

    request = services.request_break_glass(request=pending, user=requester, reason=REASON)

    assert request.status == Status.APPROVED and request.emergency_by == requester


@pytest.mark.parametrize("reason", ["", "   \n\t "])
def test_a_reason_is_required(pending, stage_admin, reason):
    with pytest.raises(InvalidRequest, match="needs a reason"):
        services.request_break_glass(request=pending, user=stage_admin, reason=reason)
    pending.refresh_from_db()
    assert pending.status == Status.PENDING


def test_only_a_pending_request_is_applied_at_once(broken, stage_admin):
    with pytest.raises(AlreadyDecided):
        services.request_break_glass(request=broken, user=stage_admin, reason=REASON)
    assert AuditEvent.objects.filter(action="request.emergency", request_id=broken.pk).count() == 1


def test_a_stage_that_allows_no_emergency_changes_refuses_and_audits(pending, stage_admin):
    Stage.objects.filter(pk=pending.stage_id).update(emergency_allowed=False)
    pending = PromotionRequest.objects.select_related("stage").get(pk=pending.pk)

    with pytest.raises(NotAllowed, match="allows no emergency changes"):
        services.request_break_glass(request=pending, user=stage_admin, reason=REASON)
    assert denied(stage_admin) == 1


def test_the_model_files_still_being_recorded_stop_the_emergency_too(pending, stage_admin):
    PromotionRequest.objects.filter(pk=pending.pk).update(manifest_state=ManifestState.COMPUTING)

    with pytest.raises(ManifestPending):
        services.request_break_glass(request=pending, user=stage_admin, reason=REASON)


def test_failing_checks_stop_the_emergency_too(pending, stage_admin):
    PromotionRequest.objects.filter(pk=pending.pk).update(
        check_results=[{"rule": "metric accuracy >= 0.99", "passed": False, "actual": "0.9", "message": ""}]
    )
    pending.refresh_from_db()

    with pytest.raises(ChecksFailed, match="accuracy"):
        services.request_break_glass(request=pending, user=stage_admin, reason=REASON)


def test_the_worker_applies_an_emergency_change_without_reopening_it_for_approvals(broken, monkeypatch):
    """The apply's approval count is the one thing break-glass skips: it is not reopened."""
    from promotions.services import applying

    seen = {}

    def registry_write(request, approvers, lease):
        seen["approvers"] = approvers
        raise applying._PreconditionFailed("stop before MLflow")

    monkeypatch.setattr(applying, "_apply_to_registry", registry_write)

    assert services.promotion_apply(request_id=broken.pk) == "failed"
    assert seen["approvers"].usernames == ["sam"]
    assert not AuditEvent.objects.filter(action="request.reopened", request_id=broken.pk).exists()


# --- notifications ----------------------------------------------------------------------------


def test_every_approver_and_every_auditor_is_told_but_not_who_broke_the_glass(
    pending, stage_admin, reviewer, reviewer2, auditor, requester, settings
):
    for user in (stage_admin, reviewer, reviewer2, auditor, requester):
        user.email = f"{user.username}@example.com"
        user.save()
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    request = services.request_break_glass(request=pending, user=stage_admin, reason=REASON)
    email = OutboundEmail.objects.get(payload__event="promotion.emergency")

    sent = notifications.event_email_send(**email.payload)

    assert sent == 3
    assert sorted(m.to[0] for m in mail.outbox) == [
        "alice@example.com",
        "rex@example.com",
        "rita@example.com",
    ]
    assert "Emergency change" in mail.outbox[0].subject
    assert REASON in mail.outbox[0].body and "EMERGENCY CHANGE by Sam Tester" in mail.outbox[0].body
    payload = notifications.event_payload("promotion.emergency", request)
    assert payload["request"]["emergency"]["reason"] == REASON


# --- retrospective review ---------------------------------------------------------------------


def test_the_review_is_complete_once_the_stages_number_of_approvers_reviewed(broken, reviewer, reviewer2):
    once = services.retrospective_review_give(request=broken, reviewer=reviewer, comment="right call")
    assert once.review_completed_at is None

    twice = services.retrospective_review_give(request=broken, reviewer=reviewer2, comment="agreed")

    assert twice.review_completed_at is not None
    assert AuditEvent.objects.filter(action="review.retrospective", request_id=broken.pk).count() == 2
    assert (
        AuditEvent.objects.filter(action="review.retrospective_completed", request_id=broken.pk).count() == 1
    )


def test_a_reviewer_reviews_once(broken, reviewer):
    services.retrospective_review_give(request=broken, reviewer=reviewer, comment="right call")
    with pytest.raises(AlreadyDecided):
        services.retrospective_review_give(request=broken, reviewer=reviewer, comment="again")
    assert RetrospectiveReview.objects.filter(request=broken).count() == 1


def test_the_stage_admin_who_broke_the_glass_the_requester_and_outsiders_do_not_count(
    broken, stage_admin, requester, auditor
):
    stage_admin.groups.add(Group.objects.get(name=roles.REVIEWERS))  # an approver too
    requester.groups.add(Group.objects.get(name=roles.REVIEWERS))
    for user in (stage_admin, requester, auditor):
        user = type(user).objects.get(pk=user.pk)
        with pytest.raises(NotAllowed):
            services.retrospective_review_give(request=broken, reviewer=user, comment="fine by me")
        assert denied(user) == 1
    assert not RetrospectiveReview.objects.filter(request=broken).exists()


def test_a_retrospective_review_needs_a_comment(broken, reviewer):
    with pytest.raises(InvalidRequest, match="needs a comment"):
        services.retrospective_review_give(request=broken, reviewer=reviewer, comment="  ")


def test_a_request_that_was_not_an_emergency_has_no_retrospective_review(pending, reviewer):
    with pytest.raises(InvalidRequest, match="not an emergency change"):
        services.retrospective_review_give(request=pending, reviewer=reviewer, comment="?")


# --- reminders (the clock is the task's `now`) ------------------------------------------------


def test_an_overdue_review_is_reminded_once_a_day(broken, settings, reviewer):
    settings.BREAK_GLASS_REMIND_INTERVAL_SECONDS = 86400
    due = broken.review_due_at

    assert tasks.remind_retrospective_reviews((due - timedelta(minutes=5)).isoformat()) == []
    assert tasks.remind_retrospective_reviews((due + timedelta(hours=3)).isoformat()) == [broken.pk]
    assert tasks.remind_retrospective_reviews((due + timedelta(hours=20)).isoformat()) == []
    assert tasks.remind_retrospective_reviews((due + timedelta(hours=27)).isoformat()) == [broken.pk]

    events = AuditEvent.objects.filter(action="review.retrospective_overdue", request_id=broken.pk)
    assert events.count() == 2
    assert (
        "overdue by 3 h: promote sales_forecast v5 to Production (0 of 2 reviews)"
        in events.order_by("sequence").first().meaning
    )
    assert OutboundEmail.objects.filter(payload__event="review.retrospective_overdue").count() == 2


def test_a_completed_review_is_not_reminded(broken, reviewer, reviewer2):
    services.retrospective_review_give(request=broken, reviewer=reviewer, comment="ok")
    services.retrospective_review_give(request=broken, reviewer=reviewer2, comment="ok")

    assert tasks.remind_retrospective_reviews((broken.review_due_at + timedelta(days=2)).isoformat()) == []


def test_a_clock_without_an_offset_is_refused(broken):
    with pytest.raises(ValueError, match="offset"):
        tasks.remind_retrospective_reviews("2026-12-01T10:00:00")


# --- pages ------------------------------------------------------------------------------------


def test_a_stage_admin_sees_the_collapsed_emergency_form_and_others_do_not(pending, stage_admin, reviewer):
    body = web(stage_admin).get(f"/requests/{pending.pk}/").content.decode()
    assert "<summary>Apply now (emergency)</summary>" in body and 'name="reason"' in body
    assert "Apply now (emergency)" not in web(reviewer).get(f"/requests/{pending.pk}/").content.decode()


def test_the_page_applies_at_once_with_a_reason_and_the_confirmation(pending, stage_admin, enqueued):
    client = web(stage_admin)

    response = client.post(
        f"/requests/{pending.pk}/emergency/", {"reason": REASON, "confirm": "yes"}, follow=True
    )

    assert response.status_code == 200
    body = response.content.decode()
    assert "data-emergency>Emergency change</strong>" in body and REASON in body
    assert "Retrospective review (0 of 2 reviews)" in body and "Due by <time" in body
    pending.refresh_from_db()
    assert pending.status == Status.APPROVED and pending.is_emergency


def test_the_page_refuses_without_the_confirmation_or_the_reason(pending, stage_admin):
    client = web(stage_admin)
    no_confirm = client.post(f"/requests/{pending.pk}/emergency/", {"reason": REASON}, HTTP_HX_REQUEST="true")
    no_reason = client.post(
        f"/requests/{pending.pk}/emergency/", {"reason": " ", "confirm": "yes"}, HTTP_HX_REQUEST="true"
    )

    assert no_confirm.status_code == 422 and "Tick the confirmation" in no_confirm.content.decode()
    assert no_reason.status_code == 422 and "needs a reason" in no_reason.content.decode()
    pending.refresh_from_db()
    assert pending.status == Status.PENDING


def test_an_approver_gives_the_retrospective_review_on_the_page(broken, reviewer):
    client = web(reviewer)
    body = client.get(f"/requests/{broken.pk}/").content.decode()
    assert "Retrospective review (0 of 2 reviews)" in body and "Record retrospective review" in body

    response = client.post(
        f"/requests/{broken.pk}/retrospective-review/", {"comment": "right call"}, follow=True
    )

    body = response.content.decode()
    assert "Retrospective review (1 of 2 reviews)" in body and "“right call”" in body
    assert "Record retrospective review" not in body


def test_an_overdue_review_reads_in_words_on_the_page(broken, reviewer):
    PromotionRequest.objects.filter(pk=broken.pk).update(
        review_due_at=timezone.now() - timedelta(hours=3, minutes=10)
    )
    body = web(reviewer).get(f"/requests/{broken.pk}/").content.decode()
    assert "Review overdue by 3 h" in body


def test_the_queue_lists_the_emergency_changes_awaiting_the_reviewers_review(broken, reviewer, stage_admin):
    PromotionRequest.objects.filter(pk=broken.pk).update(review_due_at=timezone.now() - timedelta(hours=5))
    body = web(reviewer).get("/").content.decode()
    assert "Emergency changes awaiting review (1)" in body and "Review overdue by 5 h" in body
    assert "Emergency changes awaiting review" not in web(stage_admin).get("/").content.decode()

    open_tab = web(reviewer).get("/?tab=open").content.decode()
    assert '<strong class="status status--failed">Emergency change</strong>' in open_tab


def test_the_auditors_page_lists_every_emergency_change_with_its_review(broken, auditor, reviewer):
    services.retrospective_review_give(request=broken, reviewer=reviewer, comment="ok")
    body = web(auditor).get("/audit/emergencies/").content.decode()
    assert REASON in body and "Sam Tester" in body and "sales_forecast v5" in body
    assert "1 of 2, due" in body and "Rex Tester" in body

    PromotionRequest.objects.filter(pk=broken.pk).update(review_due_at=timezone.now() - timedelta(hours=2))
    body = web(auditor).get("/audit/emergencies/").content.decode()
    assert "Review overdue by 2 h" in body
    log = web(auditor).get("/audit/").content.decode()
    assert "1 emergency change still waits" in log and reverse("audit_emergencies") in log
    assert (
        '<code>request.emergency</code> <strong class="status status--failed">Emergency change</strong>'
        in log
    )


def test_the_stage_catalog_says_the_rule_in_words(client, requester, settings):
    settings.BREAK_GLASS_REVIEW_HOURS = 24
    body = web(requester).get("/stages/").content.decode()
    assert "a stage admin may apply a pending request at once, with a reason" in body
    assert "2 approvers from Reviewers must review it within 24 h afterwards" in body


def test_changing_the_stages_emergency_rule_in_the_admin_is_audited(client, stage_admin):
    stage_admin.user_permissions.set(Permission.objects.filter(codename__endswith="_stage"))
    client.force_login(stage_admin)
    production = stage("Production")
    Stage.objects.filter(pk=production.pk).update(emergency_allowed=False)
    data = current_form("Production", emergency_allowed="on")

    response = client.post(f"/admin/promotions/stage/{production.pk}/change/", data)

    assert response.status_code == 302, response.content.decode()[:3000]
    assert Stage.objects.get(pk=production.pk).emergency_allowed
    event = AuditEvent.objects.filter(action="stage.changed").latest("sequence")
    assert event.details["changes"]["emergency_allowed"] == {"before": False, "after": True}
    assert "emergency changes allowed (applied at once, reviewed afterwards)" in event.details["lowered"]


# --- access: every new URL as anonymous, the wrong role, the right role -----------------------


@pytest.mark.parametrize("path", ["emergency/", "retrospective-review/"])
def test_anonymous_posts_are_sent_to_sign_in(pending, path):
    response = Client().post(f"/requests/{pending.pk}/{path}", {"reason": REASON, "confirm": "yes"})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_wrong_role_gets_403_on_every_new_url(broken, pending, reviewer, outsider, auditor, stage_admin):
    other = make_user("otto", roles.REQUESTERS)
    assert (
        web(reviewer)
        .post(f"/requests/{broken.pk}/emergency/", {"reason": REASON, "confirm": "yes"})
        .status_code
        == 403
    )
    assert (
        web(outsider)
        .post(f"/requests/{broken.pk}/emergency/", {"reason": REASON, "confirm": "yes"})
        .status_code
        == 403
    )
    assert (
        web(other).post(f"/requests/{broken.pk}/retrospective-review/", {"comment": "x"}).status_code == 403
    )
    assert (
        web(stage_admin).post(f"/requests/{broken.pk}/retrospective-review/", {"comment": "x"}).status_code
        == 403
    )
    assert web(reviewer).get("/audit/emergencies/").status_code == 403
    assert Client().get("/audit/emergencies/").status_code == 302
    assert web(auditor).get("/audit/emergencies/").status_code == 200


def test_a_get_on_the_new_actions_is_refused(broken, stage_admin):
    assert web(stage_admin).get(f"/requests/{broken.pk}/emergency/").status_code == 405


def test_an_unknown_request_is_404(stage_admin):
    assert (
        web(stage_admin).post("/requests/999999/emergency/", {"reason": REASON, "confirm": "yes"}).status_code
        == 404
    )


# --- the API ----------------------------------------------------------------------------------


def test_the_api_applies_at_once_and_reports_the_emergency(pending, stage_admin, enqueued):
    response = post_json(api(stage_admin), f"/api/requests/{pending.pk}/emergency", {"reason": REASON})

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "approved"
    assert body["emergency"]["by"] == "Sam Tester" and body["emergency"]["reason"] == REASON
    assert body["emergency"]["reviews_required"] == 2 and body["emergency"]["review_overdue"] is False
    assert AuditEvent.objects.get(action="request.emergency").details["via"] == "api"


def test_the_api_refuses_the_wrong_role_a_missing_reason_and_a_decided_request(
    pending, stage_admin, reviewer, enqueued
):
    assert (
        post_json(api(reviewer), f"/api/requests/{pending.pk}/emergency", {"reason": REASON}).status_code
        == 403
    )
    assert post_json(api(stage_admin), f"/api/requests/{pending.pk}/emergency", {}).status_code == 422
    blank = post_json(api(stage_admin), f"/api/requests/{pending.pk}/emergency", {"reason": "  "})
    assert blank.status_code == 422 and blank.json()["code"] == "invalid"
    assert (
        post_json(api(stage_admin), f"/api/requests/{pending.pk}/emergency", {"reason": REASON}).status_code
        == 200
    )
    again = post_json(api(stage_admin), f"/api/requests/{pending.pk}/emergency", {"reason": REASON})
    assert again.status_code == 409 and again.json()["code"] == "already_decided"
    anonymous = post_json(Client(), f"/api/requests/{pending.pk}/emergency", {"reason": REASON})
    assert anonymous.status_code == 401


def test_the_api_takes_a_retrospective_review(broken, reviewer, stage_admin):
    response = post_json(api(reviewer), f"/api/requests/{broken.pk}/retrospective-review", {"comment": "ok"})

    assert response.status_code == 200, response.content
    assert response.json()["emergency"]["reviews"][0]["reviewer"] == "Rex Tester"
    own = post_json(api(stage_admin), f"/api/requests/{broken.pk}/retrospective-review", {"comment": "ok"})
    assert own.status_code == 403
    empty = post_json(api(reviewer), f"/api/requests/{broken.pk}/retrospective-review", {"comment": ""})
    assert empty.status_code in (409, 422)


def test_a_request_that_was_not_an_emergency_says_so_in_the_api(pending, requester):
    assert api(requester).get(f"/api/requests/{pending.pk}").json()["emergency"] is None


def test_selectors_list_the_emergency_changes(broken):
    assert [change.request.pk for change in selectors.emergency_changes()] == [broken.pk]
