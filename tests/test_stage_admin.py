"""Stage admins edit the catalog in the Django admin; refusals explain; changes are audited."""

import pytest
from django.contrib.auth.models import Group, Permission

from promotions.models import AuditEvent, Stage

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, stage_admin):
    stage_admin.user_permissions.set(Permission.objects.filter(codename__endswith="_stage"))
    client.force_login(stage_admin)
    return client


def form(**overrides):
    reviewers = Group.objects.get(name="Reviewers")
    data = {
        "name": "Canary",
        "position": "15",
        "description": "",
        "mlflow_stage": "",
        "mlflow_alias": "canary",
        "allow_from_none": "",
        "allowed_from": [str(Stage.objects.get(name="Staging").pk)],
        "required_approvals": "1",
        "approver_groups": [str(reviewers.pk)],
        "checks": "metric accuracy >= 0.9\ntag validation == passed",
        "request_ttl": "3 00:00:00",
        "is_active": "on",
        "enforcement": "detect",
        "emergency_allowed": "on",  # the default: a form that changes nothing leaves it on
        # The risk tier rules' inline formset on the same page: none unless a test adds rows.
        "risk_tier_rules-TOTAL_FORMS": "0",
        "risk_tier_rules-INITIAL_FORMS": "0",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def current_form(name: str, **overrides):
    """The stage's edit form as its page shows it now, with `overrides`: a post that changes
    only what the test says."""
    current = Stage.objects.get(name=name)
    fields = dict(
        name=current.name,
        position=str(current.position),
        mlflow_stage=current.mlflow_stage,
        mlflow_alias=current.mlflow_alias,
        archive_existing="on" if current.archive_existing else None,
        allow_from_none="on" if current.allow_from_none else None,
        allowed_from=[str(s.pk) for s in current.allowed_from.all()],
        required_approvals=str(current.required_approvals),
        approver_groups=[str(g.pk) for g in current.approver_groups.all()],
        checks=current.checks,
        request_ttl=str(current.request_ttl.days) + " 00:00:00",
        enforcement=current.enforcement,
        emergency_allowed="on" if current.emergency_allowed else None,
        independent_validation="on" if current.independent_validation else None,
    )
    return form(**{**fields, **overrides})


def test_a_stage_admin_adds_a_stage_and_it_is_audited(admin_client):
    response = admin_client.post("/admin/promotions/stage/add/", form())
    assert response.status_code == 302, response.content.decode()[:2000]
    stage = Stage.objects.get(name="Canary")
    assert stage.mlflow_alias == "canary"
    event = AuditEvent.objects.get(action="stage.created", to_stage="Canary")
    assert event.actor_username == "sam"
    assert event.details["changes"]["checks"]["after"] == "metric accuracy >= 0.9\ntag validation == passed"


def test_a_change_records_before_and_after(admin_client):
    production = Stage.objects.get(name="Production")
    data = form(
        name="Production",
        mlflow_stage="Production",
        mlflow_alias="",
        required_approvals="3",
        archive_existing="on",
        allowed_from=[str(Stage.objects.get(name="Staging").pk)],
        checks="",
        request_ttl="7 00:00:00",
        position="20",
    )
    response = admin_client.post(f"/admin/promotions/stage/{production.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    event = AuditEvent.objects.get(action="stage.changed")
    assert event.details["changes"]["required_approvals"] == {"before": 2, "after": 3}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "staging"}, "A stage named &#x27;Staging&#x27; exists already"),
        (
            {"mlflow_alias": "", "mlflow_stage": ""},
            "Bind the stage to an MLflow stage, an MLflow alias, or both",
        ),
        ({"mlflow_alias": "bad alias!"}, "letters, digits"),
        ({"mlflow_alias": "latest"}, "reserved by MLflow"),
        ({"approver_groups": None}, "needs approver groups"),
        ({"checks": "metric accuracy is good"}, "is not a check rule"),
        ({"checks": "metric accuracy >= high"}, "compare with a number"),
        ({"archive_existing": "on"}, "Archiving applies only to a legacy MLflow stage"),
    ],
)
def test_invalid_catalog_entries_are_refused_with_a_reason(admin_client, overrides, message):
    response = admin_client.post("/admin/promotions/stage/add/", form(**overrides))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert (
        not Stage.objects.filter(name__iexact=overrides.get("name", "Canary"))
        .exclude(name="Staging")
        .exists()
    )
    assert not AuditEvent.objects.filter(action="stage.created", to_stage="Canary").exists()


def test_the_default_catalog(db):
    stages = {s.name: s for s in Stage.objects.prefetch_related("allowed_from", "approver_groups")}
    assert list(stages) == ["Staging", "Production", "Archived"]
    assert stages["Staging"].allow_from_none and stages["Staging"].required_approvals == 1
    assert [s.name for s in stages["Production"].allowed_from.all()] == ["Staging"]
    assert stages["Production"].required_approvals == 2 and stages["Production"].archive_existing
    assert not stages["Archived"].allowed_from.exists() and not stages["Archived"].allow_from_none


def test_lowering_a_policy_is_flagged_and_mailed_to_the_other_admins_and_auditors(
    admin_client, stage_admin, auditor, mailoutbox, django_capture_on_commit_callbacks
):
    from tests.conftest import make_user

    other_admin = make_user("sally", "Stage admins", email="sally@example.com")
    auditor.email, stage_admin.email = "alice@example.com", "sam@example.com"
    auditor.save()
    stage_admin.save()
    production = Stage.objects.get(name="Production")
    data = form(
        name="Production",
        mlflow_stage="Production",
        mlflow_alias="",
        required_approvals="1",
        archive_existing="on",
        allowed_from=[str(Stage.objects.get(name="Staging").pk)],
        checks="",
        position="20",
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client.post(f"/admin/promotions/stage/{production.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    event = AuditEvent.objects.get(action="stage.changed")
    assert "approvals needed 2 → 1" in event.details["lowered"]
    assert len(callbacks) == 1  # the e-mail task is published after commit

    from promotions import notifications
    from promotions.models import OutboundEmail

    (email,) = OutboundEmail.objects.all()  # recorded with the change: a broker outage loses nothing
    assert (email.kind, email.payload) == (
        OutboundEmail.Kind.POLICY_LOWERED,
        {"stage_name": "Production", "lowered": event.details["lowered"], "actor_id": stage_admin.pk},
    )
    assert notifications.email_send(email_pk=email.pk).sent == 2
    assert sorted(m.to[0] for m in mailoutbox) == ["alice@example.com", "sally@example.com"]
    assert "approvals needed 2 → 1" in mailoutbox[0].body
    assert other_admin.is_active


def test_raising_a_policy_is_not_flagged(admin_client):
    production = Stage.objects.get(name="Production")
    data = form(
        name="Production",
        mlflow_stage="Production",
        mlflow_alias="",
        required_approvals="3",
        archive_existing="on",
        allowed_from=[str(Stage.objects.get(name="Staging").pk)],
        checks="metric accuracy >= 0.95",
        position="20",
    )
    assert admin_client.post(f"/admin/promotions/stage/{production.pk}/change/", data).status_code == 302
    assert "lowered" not in AuditEvent.objects.get(action="stage.changed").details


def test_requiring_signatures_is_audited_and_dropping_them_is_flagged_as_lowered(admin_client):
    production = Stage.objects.get(name="Production")
    data = form(
        name="Production",
        mlflow_stage="Production",
        mlflow_alias="",
        required_approvals="2",
        archive_existing="on",
        checks="",
        request_ttl="7 00:00:00",
        position="20",
        signature_required="on",
        signature_meanings="Released by QA\n\nReviewed — technical\n",
    )
    response = admin_client.post(f"/admin/promotions/stage/{production.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    production.refresh_from_db()
    assert production.signature_required
    assert production.signature_meanings == ["Released by QA", "Reviewed — technical"]
    changes = AuditEvent.objects.get(action="stage.changed").details["changes"]
    assert changes["signature_required"] == {"before": False, "after": True}
    assert changes["signature_meanings"]["after"] == ["Released by QA", "Reviewed — technical"]
    data.pop("signature_required")
    admin_client.post(f"/admin/promotions/stage/{production.pk}/change/", data)
    last = AuditEvent.objects.filter(action="stage.changed").order_by("-sequence").first()
    assert last.details["changes"]["signature_required"] == {"before": True, "after": False}
    assert "decisions no longer signed" in last.details["lowered"]


def test_the_catalog_page_says_in_words_which_stages_sign(client, requester):
    Stage.objects.filter(name="Production").update(signature_required=True)
    client.force_login(requester)
    html = client.get("/stages/").content.decode()
    assert "approvers re-enter their password and say what their signature means" in html
    assert "Approved for release, Reviewed — technical, Reviewed — quality" in html
