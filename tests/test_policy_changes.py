"""Departed reviewers stop counting; a request is held to the stricter of its filing-time and
current policy."""

import pytest

from promotions import services
from promotions.errors import NotAllowed
from promotions.models import AuditEvent, PromotionRequest
from registry_sync.models import ModelVersion
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status


@pytest.fixture
def approved(requester, reviewer, reviewer2):
    model = mirror_model(versions={1: {"current_stage": "Staging"}})
    request = services.promotion_request_create(
        version=version(model, 1), stage=stage("Production"), requested_by=requester, justification="go"
    )
    services.review_approve(request=request, reviewer=reviewer)
    request = services.review_approve(request=request, reviewer=reviewer2)
    assert request.status == Status.APPROVED
    return request


def test_an_approval_by_a_deactivated_reviewer_no_longer_counts_at_apply(
    approved, reviewer2, client, requester
):
    # Behind the signals' back (a raw UPDATE): the apply's own check still catches it.
    type(reviewer2).objects.filter(pk=reviewer2.pk).update(is_active=False)

    assert services.promotion_apply(request_id=approved.pk) == "reopened"

    approved.refresh_from_db()
    assert approved.status == Status.PENDING
    assert "1 of the 2 approvals needed still count" in approved.last_error
    assert AuditEvent.objects.filter(action="request.reopened", request_id=approved.pk).exists()
    assert ModelVersion.objects.get(pk=approved.version_id).current_stage == "Staging"
    client.force_login(requester)
    page = client.get(f"/requests/{approved.pk}/").content.decode()
    assert "Waiting for approvals again" in page


def test_an_approval_by_a_reviewer_removed_from_the_group_no_longer_counts(approved, reviewer):
    type(reviewer).groups.through.objects.filter(user=reviewer).delete()
    assert services.promotion_apply(request_id=approved.pk) == "reopened"
    approved.refresh_from_db()
    assert approved.status == Status.PENDING


def test_lowering_the_approvals_does_not_push_an_open_request_through(requester, reviewer):
    model = mirror_model(versions={1: {"current_stage": "Staging"}})
    request = services.promotion_request_create(
        version=version(model, 1), stage=stage("Production"), requested_by=requester, justification="go"
    )
    production = stage("Production")
    production.required_approvals = 1
    production.save()

    request = services.review_approve(request=request, reviewer=reviewer)

    assert request.status == Status.PENDING  # filed under two approvals: two it needs
    assert AuditEvent.objects.get(action="review.approved").details["required"] == 2


def test_raising_the_approvals_holds_an_approved_request_back(approved):
    production = stage("Production")
    production.required_approvals = 3
    production.save()
    assert services.promotion_apply(request_id=approved.pk) == "reopened"


# --- roles and accounts on the record -----------------------------------------------------------


def test_removing_a_reviewer_from_a_group_is_recorded_and_their_approval_goes_stale(approved, reviewer):
    from django.contrib.auth.models import Group

    Group.objects.get(name="Reviewers").user_set.remove(reviewer)  # from the group's side

    removed = AuditEvent.objects.get(action="user.group_removed")
    assert removed.details == {"username": "rex", "group": "Reviewers"}
    assert removed.actor_name == "system"  # no signed-in user: a shell or a script
    approved.refresh_from_db()
    assert approved.status == Status.PENDING
    assert approved.reviews.get(reviewer=reviewer).stale


def test_deactivating_a_reviewer_is_recorded_and_reopens_what_needed_them(approved, reviewer2):
    reviewer2.is_active = False
    reviewer2.save()
    assert AuditEvent.objects.filter(action="user.deactivated", details__username="rita").exists()
    approved.refresh_from_db()
    assert approved.status == Status.PENDING
    reviewer2.is_active = True
    reviewer2.save()
    assert AuditEvent.objects.filter(action="user.activated").count() == 1


def test_a_group_change_in_the_admin_names_who_made_it(client, requester, db):
    from django.contrib.auth.models import Group, User

    boss = User.objects.create_superuser("boss", password="pw-boss-long", first_name="Bo", last_name="Ss")
    client.force_login(boss)
    url = f"/admin/auth/user/{requester.pk}/change/"
    form = client.get(url).context["adminform"].form
    data = {
        name: value
        for name, value in form.initial.items()
        if value is not None and name not in ("password", "groups", "user_permissions", "last_login")
    }
    data["date_joined_0"], data["date_joined_1"] = (
        requester.date_joined.strftime("%Y-%m-%d"),
        requester.date_joined.strftime("%H:%M:%S"),
    )
    data["groups"] = [Group.objects.get(name="Reviewers").pk]  # Requesters → Reviewers
    data["is_active"] = "on"
    response = client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]

    added = AuditEvent.objects.filter(action="user.group_added").latest("sequence")
    removed = AuditEvent.objects.get(action="user.group_removed")
    assert (added.details["group"], removed.details["group"]) == ("Reviewers", "Requesters")
    assert added.actor_username == removed.actor_username == "boss"


def test_a_bulk_delete_of_stages_in_the_admin_is_recorded_stage_by_stage(client, db):
    from django.contrib.auth.models import User

    from promotions.models import Stage

    spare = [
        Stage.objects.create(name=f"Spare{n}", position=90 + n, mlflow_alias=f"spare{n}") for n in (1, 2)
    ]
    client.force_login(User.objects.create_superuser("boss", password="pw-boss-long"))
    response = client.post(
        "/admin/promotions/stage/",
        {"action": "delete_selected", "_selected_action": [s.pk for s in spare], "post": "yes"},
    )
    assert response.status_code == 302
    deleted = AuditEvent.objects.filter(action="stage.deleted").order_by("sequence")
    assert [e.to_stage for e in deleted] == ["Spare1", "Spare2"]
    assert {e.actor_username for e in deleted} == {"boss"}


def test_a_group_added_to_the_stage_later_does_not_decide_an_open_request(requester):
    """Held to the stricter policy: the approver groups the request was filed under count too."""
    from django.contrib.auth.models import Group

    from promotions import policy
    from tests.conftest import make_user

    model = mirror_model(versions={1: {"current_stage": "Staging"}})
    request = services.promotion_request_create(
        version=version(model, 1), stage=stage("Production"), requested_by=requester, justification="go"
    )
    friends = Group.objects.create(name="Friends of the requester")
    friend = make_user("fred")
    friend.groups.add(friends)
    stage("Production").approver_groups.add(friends)  # the policy loosened after filing

    request = PromotionRequest.objects.get(pk=request.pk)
    assert not policy.may_decide(friend, request)
    assert not policy.decidable_requests(friend).filter(pk=request.pk).exists()
    with pytest.raises(NotAllowed):
        services.review_approve(request=request, reviewer=friend)
