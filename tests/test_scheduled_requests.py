"""Deployment windows and freezes through the services, the pages and the API (in-process)."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission
from django.db import IntegrityError, transaction
from django.utils import timezone

from promotions import services, tasks
from promotions.errors import DuplicateRequest, TransientApplyError
from promotions.models import AuditEvent, Freeze, PromotionRequest, Stage
from promotions.services import lifecycle, people, scheduling
from registry_sync import gateway
from tests.conftest import free_port
from tests.factories import mirror_model, stage, version
from tests.test_api import api_client
from tests.test_stage_admin import form as stage_form

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status


@pytest.fixture
def sales():
    return mirror_model(
        "sales_forecast",
        {
            3: {"current_stage": "Production", "metrics": {"accuracy": 0.91}},
            5: {"current_stage": "Staging", "metrics": {"accuracy": 0.93}},
        },
    )


@pytest.fixture
def published(monkeypatch):
    """The apply tasks published, instead of a broker (e-mails and the rest are dropped)."""
    sent = []

    def publish(name, args):
        if name == lifecycle.APPLY_TASK:
            sent.append((name, args))
        return True

    monkeypatch.setattr(lifecycle.outbox, "publish", publish)
    return sent


def closed_today() -> tuple[str, datetime]:
    """A UTC window on a weekday three days from today, and when it next opens."""
    today = timezone.now().astimezone(UTC).date()
    day = today + timedelta(days=3)
    return f"{day.strftime('%a')} 00:00–24:00", datetime(day.year, day.month, day.day, tzinfo=UTC)


def approved(sales, requester, reviewer, reviewer2, captured):
    with captured(execute=True):
        request = services.promotion_request_create(
            version=version(sales, 5), stage=stage("Production"), requested_by=requester, justification="Q3"
        )
        request = services.review_approve(request=request, reviewer=reviewer)
        request = services.review_approve(request=request, reviewer=reviewer2)
    return request


def freeze(name="Production", *, starts=-1, ends=2, reason="year-end close"):
    now = timezone.now()
    return scheduling.freeze_add(
        stage=stage(name),
        starts_at=now + timedelta(hours=starts),
        ends_at=now + timedelta(hours=ends),
        reason=reason,
        actor=None,
    )


def actions(request):
    return list(
        AuditEvent.objects.filter(request_id=request.pk).order_by("sequence").values_list("action", flat=True)
    )


# --- services -----------------------------------------------------------------------------------


def test_a_request_approved_outside_its_window_is_scheduled_and_not_published(
    sales, requester, reviewer, reviewer2, published, django_capture_on_commit_callbacks
):
    line, opening = closed_today()
    Stage.objects.filter(name="Production").update(deployment_windows=line)

    request = approved(sales, requester, reviewer, reviewer2, django_capture_on_commit_callbacks)

    assert request.status == Status.SCHEDULED
    assert request.scheduled_for == opening
    assert request.hold_reason == f"Outside the stage's deployment windows ({line}, UTC time)"
    assert actions(request)[-2:] == ["request.approved", "request.scheduled"]
    event = AuditEvent.objects.get(action="request.scheduled", request_id=request.pk)
    assert f"applies at {opening.strftime('%a %-d %b')} 00:00 UTC" in event.meaning
    assert event.details["scheduled_for"].startswith(opening.isoformat()[:19])
    assert published == []


def test_the_beat_releases_it_when_the_window_opens_and_not_before(
    sales, requester, reviewer, reviewer2, published, django_capture_on_commit_callbacks
):
    line, opening = closed_today()
    Stage.objects.filter(name="Production").update(deployment_windows=line)
    request = approved(sales, requester, reviewer, reviewer2, django_capture_on_commit_callbacks)
    seen = request.updated_at

    assert scheduling.scheduled_release(now=opening - timedelta(seconds=1)) == []
    with django_capture_on_commit_callbacks(execute=True):
        assert scheduling.scheduled_release(now=opening) == [request.pk]

    request.refresh_from_db()
    assert request.status == Status.APPROVED
    assert request.scheduled_for is None and request.hold_reason == ""
    assert request.updated_at > seen  # the live panel notices
    assert published == [(lifecycle.APPLY_TASK, [request.pk])]
    assert actions(request)[-1] == "request.released"
    # Released once: the next run finds nothing.
    assert scheduling.scheduled_release(now=opening) == []


def test_a_freeze_holds_an_approved_request_until_it_ends(
    sales, requester, reviewer, reviewer2, published, django_capture_on_commit_callbacks
):
    frozen = freeze(reason="year-end close")

    request = approved(sales, requester, reviewer, reviewer2, django_capture_on_commit_callbacks)

    assert request.status == Status.SCHEDULED
    assert request.scheduled_for == frozen.ends_at
    until = frozen.ends_at.astimezone(UTC).strftime("%-d %b %H:%M")
    assert request.hold_reason == f"Frozen until {until} UTC: year-end close"
    assert published == []
    with django_capture_on_commit_callbacks(execute=True):
        assert scheduling.scheduled_release(now=frozen.ends_at) == [request.pk]
    assert published == [(lifecycle.APPLY_TASK, [request.pk])]


def test_an_automatic_stage_is_held_by_a_freeze_as_well(
    sales, requester, published, django_capture_on_commit_callbacks
):
    Stage.objects.filter(name="Production").update(required_approvals=0)
    freeze()
    with django_capture_on_commit_callbacks(execute=True):
        request = services.promotion_request_create(
            version=version(sales, 5), stage=stage("Production"), requested_by=requester, justification="Q3"
        )
    request.refresh_from_db()
    assert request.status == Status.SCHEDULED
    assert published == []


def test_a_freeze_added_after_the_approval_stops_the_worker_before_any_mlflow_call(
    sales, requester, reviewer, reviewer2, published, django_capture_on_commit_callbacks, monkeypatch
):
    request = approved(sales, requester, reviewer, reviewer2, django_capture_on_commit_callbacks)
    assert request.status == Status.APPROVED
    frozen = freeze(reason="incident 4711")

    def no_mlflow(*args, **kwargs):
        raise AssertionError("MLflow was called during a freeze")

    for name in ("get_model_version", "iter_model_version_pages", "transition_stage", "set_alias"):
        monkeypatch.setattr(gateway, name, no_mlflow)

    assert services.promotion_apply(request_id=request.pk) == "scheduled"

    request.refresh_from_db()
    assert request.status == Status.SCHEDULED
    assert request.attempts == 0 and request.lease_token == ""
    assert request.scheduled_for == frozen.ends_at
    assert "incident 4711" in request.hold_reason
    assert actions(request)[-1] == "request.scheduled"


def test_break_glass_takes_a_frozen_request_past_the_freeze_at_approval_and_at_the_worker(
    sales,
    requester,
    reviewer,
    reviewer2,
    stage_admin,
    published,
    django_capture_on_commit_callbacks,
    settings,
):
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"  # nobody answers there
    freeze(reason="year-end close")
    request = approved(sales, requester, reviewer, reviewer2, django_capture_on_commit_callbacks)
    assert request.status == Status.SCHEDULED

    with django_capture_on_commit_callbacks(execute=True):
        request = services.request_break_glass(request=request, user=stage_admin, reason="outage fix")

    assert request.status == Status.APPROVED
    assert request.scheduled_for is None and request.hold_reason == ""
    assert published == [(lifecycle.APPLY_TASK, [request.pk])]

    # The attempt got past the freeze to MLflow (which does not answer), and waits to retry.
    with pytest.raises(TransientApplyError):
        services.promotion_apply(request_id=request.pk)
    request.refresh_from_db()
    assert request.status == Status.APPROVED and request.attempts == 1


def test_a_freeze_added_later_moves_the_opening(
    sales, requester, reviewer, reviewer2, published, django_capture_on_commit_callbacks
):
    line, opening = closed_today()
    Stage.objects.filter(name="Production").update(deployment_windows=line)
    request = approved(sales, requester, reviewer, reviewer2, django_capture_on_commit_callbacks)
    scheduling.freeze_add(
        stage=stage("Production"),
        starts_at=opening - timedelta(hours=1),
        ends_at=opening + timedelta(hours=6),
        reason="migration",
        actor=None,
    )

    assert scheduling.scheduled_release(now=opening) == []

    request.refresh_from_db()
    assert request.status == Status.SCHEDULED
    assert request.scheduled_for == opening + timedelta(hours=6)
    assert "migration" in request.hold_reason
    assert actions(request)[-1] == "request.rescheduled"
    assert published == []


def test_scheduled_requests_never_expire_and_the_sweeper_leaves_them_alone(
    sales, requester, reviewer, reviewer2, published, django_capture_on_commit_callbacks
):
    freeze()
    request = approved(sales, requester, reviewer, reviewer2, django_capture_on_commit_callbacks)
    PromotionRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now() - timedelta(days=1))

    assert services.requests_expire() == 0
    assert services.requests_sweep() == []
    request.refresh_from_db()
    assert request.status == Status.SCHEDULED


def test_a_scheduled_request_can_be_cancelled_and_is_then_never_released(
    sales, requester, reviewer, reviewer2, published, django_capture_on_commit_callbacks
):
    frozen = freeze()
    request = approved(sales, requester, reviewer, reviewer2, django_capture_on_commit_callbacks)

    request = services.request_cancel(request=request, user=requester)

    assert request.status == Status.CANCELLED
    assert scheduling.scheduled_release(now=frozen.ends_at) == []


def test_a_scheduled_request_is_open_a_second_one_is_refused(
    sales, requester, reviewer, reviewer2, published, django_capture_on_commit_callbacks
):
    freeze()
    request = approved(sales, requester, reviewer, reviewer2, django_capture_on_commit_callbacks)
    with pytest.raises(DuplicateRequest):
        services.promotion_request_create(
            version=version(sales, 5),
            stage=stage("Production"),
            requested_by=requester,
            justification="again",
        )
    # And the database says so too.
    with pytest.raises(IntegrityError), transaction.atomic():
        PromotionRequest.objects.create(
            **{
                f.name: getattr(request, f.name)
                for f in PromotionRequest._meta.concrete_fields
                if f.name not in ("id", "status")
            },
            status=Status.PENDING,
        )


def test_freezes_are_audited_when_added_and_lifted(stage_admin):
    frozen = scheduling.freeze_add(
        stage=stage("Production"),
        starts_at=datetime(2027, 12, 10, 7, 0, tzinfo=UTC),
        ends_at=datetime(2027, 12, 12, 17, 0, tzinfo=UTC),
        reason="year-end close",
        actor=stage_admin,
    )
    scheduling.freeze_remove(freeze=frozen, actor=stage_admin)

    added, lifted = AuditEvent.objects.filter(action__in=["stage.frozen", "stage.unfrozen"]).order_by(
        "sequence"
    )
    assert (
        added.meaning
        == "Stage Production frozen from 10 Dec 2027 07:00 until 12 Dec 2027 17:00 UTC: year-end close"
    )
    assert added.actor_username == stage_admin.username
    assert lifted.action == "stage.unfrozen" and not Freeze.objects.exists()


# --- pages --------------------------------------------------------------------------------------


def test_the_request_page_and_its_live_panel_say_why_it_waits_and_until_when(
    client, sales, requester, reviewer, reviewer2, published, django_capture_on_commit_callbacks
):
    Stage.objects.filter(name="Production").update(window_time_zone="Europe/Berlin")
    frozen = freeze(reason="year-end close")
    request = approved(sales, requester, reviewer, reviewer2, django_capture_on_commit_callbacks)
    client.force_login(requester)
    local = frozen.ends_at.astimezone(ZoneInfo("Europe/Berlin"))

    for response in (
        client.get(f"/requests/{request.pk}/"),
        client.get(f"/requests/{request.pk}/status/", HTTP_HX_REQUEST="true"),
    ):
        html = response.content.decode()
        assert response.status_code == 200
        assert '<span class="status status--scheduled">Scheduled</span>' in html
        assert f"Frozen until {local.strftime('%-d %b %H:%M %Z')}: year-end close" in html
        assert f"Applies at {local.strftime('%a %H:%M %Z')} (in 1 h)" in html
        assert "Cancel request" in html
    queue = client.get("/?tab=open").content.decode()
    assert "Scheduled" in queue and "Applies at" in queue


def test_the_catalog_page_shows_windows_and_freezes_in_plain_words(client, requester):
    Stage.objects.filter(name="Production").update(
        window_time_zone="Europe/Berlin", deployment_windows="Mon–Thu 09:00–16:00"
    )
    scheduling.freeze_add(
        stage=stage("Production"),
        starts_at=timezone.now() + timedelta(days=1),
        ends_at=timezone.now() + timedelta(days=2),
        reason="year-end <close>",
        actor=None,
    )
    client.force_login(requester)
    html = client.get("/stages/").content.decode()
    assert "only within Mon–Thu 09:00–16:00 (Europe/Berlin time)" in html
    assert "a request approved outside them waits as Scheduled" in html
    assert "year-end &lt;close&gt;" in html and "From " in html
    assert "any time once approved (no deployment windows)" in html  # Staging


def test_the_catalog_page_costs_the_same_queries_with_freezes_on_every_stage(
    client, requester, django_assert_max_num_queries
):
    for name in ("Staging", "Production", "Archived"):
        freeze(name)
        freeze(name, starts=5, ends=9)
    client.force_login(requester)
    with django_assert_max_num_queries(11):
        assert client.get("/stages/").status_code == 200


@pytest.fixture
def admin_client(client, stage_admin):
    stage_admin.user_permissions.set(Permission.objects.filter(codename__endswith="_stage"))
    client.force_login(stage_admin)
    return client


def production_form(**overrides):
    return stage_form(
        name="Production",
        mlflow_stage="Production",
        mlflow_alias="",
        required_approvals="2",
        archive_existing="on",
        checks="",
        request_ttl="7 00:00:00",
        position="20",
        **overrides,
    )


def test_the_stage_form_edits_windows_and_the_change_is_audited(admin_client):
    production = Stage.objects.get(name="Production")
    data = production_form(window_time_zone="Europe/Berlin", deployment_windows="mon-thu 9:00-16:00")
    response = admin_client.post(f"/admin/promotions/stage/{production.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    production.refresh_from_db()
    assert production.deployment_windows == "Mon–Thu 09:00–16:00"
    changes = AuditEvent.objects.get(action="stage.changed").details["changes"]
    assert changes["deployment_windows"] == {"before": "", "after": "Mon–Thu 09:00–16:00"}
    assert changes["window_time_zone"] == {"before": "UTC", "after": "Europe/Berlin"}

    response = admin_client.post(
        f"/admin/promotions/stage/{production.pk}/change/", production_form(deployment_windows="")
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    last = AuditEvent.objects.filter(action="stage.changed").order_by("-sequence").first()
    assert "deployment windows removed: applied at any time" in last.details.get("lowered", []), last.details


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"window_time_zone": "Mars/Olympus"}, "is not an IANA time zone"),
        ({"window_time_zone": "../../etc/passwd"}, "is not an IANA time zone"),
        ({"deployment_windows": "Mon 16:00-09:00"}, "a window ends after it starts"),
        ({"deployment_windows": "whenever\x01"}, "is not a window"),
    ],
)
def test_the_stage_form_refuses_a_window_or_zone_it_cannot_read(admin_client, overrides, message):
    production = Stage.objects.get(name="Production")
    response = admin_client.post(
        f"/admin/promotions/stage/{production.pk}/change/", production_form(**overrides)
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not AuditEvent.objects.filter(action="stage.changed").exists()


def test_a_stage_admin_adds_a_freeze_in_the_admin_and_it_is_audited(client, stage_admin):
    client.force_login(stage_admin)
    production = Stage.objects.get(name="Production")
    data = {
        "stage": str(production.pk),
        "starts_at_0": "2027-12-10",
        "starts_at_1": "07:00:00",
        "ends_at_0": "2027-12-12",
        "ends_at_1": "17:00:00",
        "reason": "year-end close",
    }
    response = client.post("/admin/promotions/freeze/add/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert Freeze.objects.get().created_by == stage_admin
    assert AuditEvent.objects.filter(action="stage.frozen", actor_username=stage_admin.username).exists()

    backwards = {**data, "ends_at_0": "2027-12-09"}
    response = client.post("/admin/promotions/freeze/add/", backwards)
    assert response.status_code == 200 and "A freeze ends after it starts." in response.content.decode()


def test_only_stage_admins_see_freezes_in_the_admin(client, reviewer):
    reviewer.is_staff = True
    reviewer.save()
    client.force_login(reviewer)
    assert client.get("/admin/promotions/freeze/add/").status_code == 403


# --- API ----------------------------------------------------------------------------------------


def test_the_api_says_scheduled_when_and_why(
    sales, requester, reviewer, reviewer2, published, django_capture_on_commit_callbacks
):
    Stage.objects.filter(name="Production").update(deployment_windows="Mon–Thu 09:00–16:00")
    frozen = freeze(reason="year-end close")
    request = approved(sales, requester, reviewer, reviewer2, django_capture_on_commit_callbacks)

    body = api_client(requester).get(f"/api/requests/{request.pk}").json()

    assert body["status"] == "scheduled"
    opening = datetime.fromisoformat(body["scheduled_for"].replace("Z", "+00:00"))
    assert opening == request.scheduled_for and opening >= frozen.ends_at
    assert body["hold"].startswith("Frozen until ") and "year-end close. Applies at " in body["hold"]
    stage_body = api_client(requester).get("/api/stages/Production").json()
    assert stage_body["deployment_windows"] == ["Mon–Thu 09:00–16:00"]
    assert stage_body["window_time_zone"] == "UTC"


def test_the_api_lists_the_freezes_in_force_and_to_come_but_not_the_past_ones(requester):
    past = freeze(starts=-5, ends=-1, reason="last week's close")
    now_on = freeze(starts=-1, ends=2, reason="year-end close")
    later = freeze(starts=24, ends=30, reason="audit")

    stages = {s["name"]: s for s in api_client(requester).get("/api/stages").json()}

    listed = stages["Production"]["freezes"]
    assert [(f["reason"], f["in_force"]) for f in listed] == [("year-end close", True), ("audit", False)]
    # The API writes times to the millisecond.
    ends = datetime.fromisoformat(listed[0]["ends_at"].replace("Z", "+00:00"))
    starts = datetime.fromisoformat(listed[1]["starts_at"].replace("Z", "+00:00"))
    assert abs(ends - now_on.ends_at) < timedelta(milliseconds=1)
    assert abs(starts - later.starts_at) < timedelta(milliseconds=1)
    assert past.reason not in str(stages)
    assert stages["Staging"]["freezes"] == []
    assert api_client(requester).get("/api/stages/production").json()["freezes"] == listed


@pytest.mark.parametrize("phase", [0.0, 0.3, 7.5, 29.9])
def test_a_scheduled_request_is_released_within_one_beat_interval_of_its_window_opening(
    sales, requester, reviewer, reviewer2, published, django_capture_on_commit_callbacks, settings, phase
):
    # A fake clock: beat runs every interval from an arbitrary phase; the first run at or after
    # the opening releases the request, none before it does.
    line, opening = closed_today()
    Stage.objects.filter(name="Production").update(deployment_windows=line)
    request = approved(sales, requester, reviewer, reviewer2, django_capture_on_commit_callbacks)
    interval = timedelta(seconds=settings.PROMOTION_SCHEDULE_INTERVAL_SECONDS)
    run = opening - 3 * interval + timedelta(seconds=phase)
    while True:
        with django_capture_on_commit_callbacks(execute=True):
            released = scheduling.scheduled_release(now=run)
        if released:
            break
        assert run < opening
        run += interval
    assert released == [request.pk]
    assert opening <= run < opening + interval
    assert published == [(lifecycle.APPLY_TASK, [request.pk])]


def test_a_scheduled_request_whose_approver_leaves_waits_for_approvals_again(
    sales, requester, reviewer, reviewer2, published, django_capture_on_commit_callbacks
):
    frozen = freeze()
    request = approved(sales, requester, reviewer, reviewer2, django_capture_on_commit_callbacks)
    reviewer.is_active = False
    reviewer.save()

    people.user_activation_changed(user=reviewer, active=False, actor=None)

    request.refresh_from_db()
    assert request.status == Status.PENDING
    assert request.scheduled_for is None and request.hold_reason == ""
    assert scheduling.scheduled_release(now=frozen.ends_at) == []


def test_the_beat_runs_the_release_every_interval_and_its_clock_must_carry_an_offset(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["release-scheduled-requests"]
    assert entry["task"] == "promotions.release_scheduled"
    assert entry["schedule"] == float(settings.PROMOTION_SCHEDULE_INTERVAL_SECONDS) == 30.0
    for now in ("tomorrow", "2027-03-28T09:00:00"):
        with pytest.raises(ValueError, match="ISO 8601 time with an offset"):
            tasks.release_scheduled(now)
    assert tasks.release_scheduled("2027-03-28T09:00:00+02:00") == []
