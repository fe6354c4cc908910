"""Independent validators: on a stage that requires them, nobody approves a version they made
(its MLflow user, or its run's), whether through the page, the API, the queue or the services."""

import json

import pytest
from django.contrib.auth.models import Permission
from django.forms import modelform_factory
from django.test import Client

from promotions import policy, services, tokens
from promotions.errors import NotIndependent
from promotions.models import AuditEvent, Profile, Review, Stage
from promotions.services import people
from tests.conftest import make_user
from tests.factories import mirror_model, stage, version
from tests.registry_helpers import make_version
from tests.test_stage_admin import current_form

pytestmark = pytest.mark.django_db

SENTENCE = (
    "You are the author of this version (MLflow user 'rex'); Production needs an independent validator."
)


@pytest.fixture
def independent():
    Stage.objects.filter(name="Production").update(independent_validation=True)
    return stage("Production")


def file(requester, **authors):
    model = mirror_model(None, {5: {"current_stage": "Staging", **authors}})
    return services.promotion_request_create(
        version=version(model, 5), stage=stage("Production"), requested_by=requester, justification="Q3"
    )


def api_post(user, path, body=None):
    _, raw = tokens.api_token_create(user=user, name="tests")
    client = Client(headers={"Authorization": f"Bearer {raw}"})
    return client.post(path, data=json.dumps(body or {}), content_type="application/json")


# --- the rule ---------------------------------------------------------------------------------


def test_the_author_of_the_run_is_refused_with_the_reason(independent, requester, reviewer):
    request = file(requester, run_user="rex")
    refused = policy.decide_refusal(reviewer, request)
    assert refused.message == SENTENCE
    assert refused.code == policy.NOT_INDEPENDENT


def test_the_versions_own_user_counts_too_and_case_does_not_matter(independent, requester, reviewer):
    request = file(requester, user_id="REX", run_user="ci-bot")
    assert "MLflow user 'REX'" in policy.decide_refusal(reviewer, request).message


def test_the_profiles_mlflow_user_is_compared_as_well(independent, requester, reviewer):
    Profile.objects.create(user=reviewer, mlflow_user="r.tester")
    request = file(requester, run_user="R.Tester")
    assert "MLflow user 'R.Tester'" in policy.decide_refusal(reviewer, request).message


def test_somebody_else_may_approve_and_so_may_the_author_where_the_stage_does_not_ask(
    requester, reviewer, reviewer2
):
    request = file(requester, run_user="rex")
    assert policy.decide_refusal(reviewer, request) is None  # the stage does not require it
    Stage.objects.filter(name="Production").update(independent_validation=True)
    request.refresh_from_db()
    assert policy.decide_refusal(reviewer2, request) is None
    assert policy.decide_refusal(reviewer, request) is not None


def test_a_version_with_no_recorded_author_is_nobodys(independent, requester, reviewer):
    assert policy.decide_refusal(reviewer, file(requester)) is None


# --- the services -----------------------------------------------------------------------------


@pytest.mark.parametrize("decide", ["approve", "reject"])
def test_the_service_refuses_the_author_and_audits_it(independent, requester, reviewer, decide):
    request = file(requester, run_user="rex")
    with pytest.raises(NotIndependent, match="independent validator"):
        if decide == "approve":
            services.review_approve(request=request, reviewer=reviewer)
        else:
            services.review_reject(request=request, reviewer=reviewer, comment="no")
    assert not Review.objects.exists()
    denied = AuditEvent.objects.get(action="auth.denied", request_id=request.pk)
    assert denied.details["reason"] == "author of the version"
    request.refresh_from_db()
    assert request.status == "pending"


# --- the page and the API ----------------------------------------------------------------------


def test_the_page_shows_a_disabled_approve_with_the_reason(client, independent, requester, reviewer):
    request = file(requester, run_user="rex")
    client.force_login(reviewer)
    html = client.get(f"/requests/{request.pk}/").content.decode()
    assert SENTENCE.replace("'", "&#x27;") in html
    assert 'disabled aria-describedby="independence-refusal">Approve</button>' in html
    assert 'name="decision" value="approve"' not in html  # no form to post


def test_a_forged_post_from_the_page_is_403_and_changes_nothing(client, independent, requester, reviewer):
    request = file(requester, run_user="rex")
    client.force_login(reviewer)
    response = client.post(f"/requests/{request.pk}/decide/", {"decision": "approve"})
    assert response.status_code == 403
    assert not Review.objects.exists()


def test_the_api_refuses_the_author_with_403_and_its_own_code(independent, requester, reviewer):
    request = file(requester, run_user="rex")
    response = api_post(reviewer, f"/api/requests/{request.pk}/approve")
    assert response.status_code == 403
    assert response.json()["code"] == "not_independent"
    assert response.json()["message"] == SENTENCE
    assert not Review.objects.exists()


# --- the queue ----------------------------------------------------------------------------------


def test_waiting_for_you_leaves_out_what_the_reviewer_made(
    client, independent, requester, reviewer, reviewer2
):
    theirs = file(requester, run_user="rex")
    client.force_login(reviewer)
    body = client.get("/?tab=mine").content.decode()
    assert f'name="request_ids" value="{theirs.pk}"' not in body
    assert "Waiting for you (0)" in body
    client.force_login(reviewer2)
    assert f'name="request_ids" value="{theirs.pk}"' in client.get("/?tab=mine").content.decode()


def test_the_queues_sql_and_the_rule_agree(independent, requester, reviewer, reviewer2):
    Profile.objects.create(user=reviewer2, mlflow_user="r_ta")  # '_' is no wildcard here
    requests = [
        file(requester, run_user="rex"),
        file(requester, user_id="Rex"),
        file(requester, run_user="r_ta"),
        file(requester, run_user="rxta"),
        file(requester, user_id="someone"),
        file(requester),
    ]
    other = make_user("vera", "Reviewers")
    for user in (reviewer, reviewer2, other):
        in_sql = set(policy.decidable_requests(user).values_list("pk", flat=True))
        in_python = {r.pk for r in requests if policy.may_decide(user, r)}
        assert in_sql == in_python, user.username
    assert len(set(policy.decidable_requests(reviewer).values_list("pk", flat=True))) == 4


# --- the catalog and the profile ------------------------------------------------------------------


def test_the_catalog_page_says_the_rule_in_words(client, independent, requester):
    client.force_login(requester)
    html = client.get("/stages/").content.decode()
    assert "no approver may be the version's author (its MLflow user or its run's)" in html


def test_a_stage_admin_turns_the_rule_on_and_off_and_off_is_flagged_as_lowered(client, stage_admin):
    stage_admin.user_permissions.set(Permission.objects.filter(codename__endswith="_stage"))
    client.force_login(stage_admin)
    production = stage("Production")
    data = current_form("Production", independent_validation="on")
    response = client.post(f"/admin/promotions/stage/{production.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert stage("Production").independent_validation
    change = AuditEvent.objects.get(action="stage.changed")
    assert change.details["changes"]["independent_validation"] == {"before": False, "after": True}
    data.pop("independent_validation")
    client.post(f"/admin/promotions/stage/{production.pk}/change/", data)
    last = AuditEvent.objects.filter(action="stage.changed").order_by("-sequence").first()
    assert "the version's author may approve" in last.details["lowered"]


def test_a_profile_change_is_audited(stage_admin, reviewer):
    ProfileForm = modelform_factory(Profile, fields=["user", "mlflow_user"])
    form = ProfileForm({"user": reviewer.pk, "mlflow_user": "r.tester"})
    assert form.is_valid(), form.errors
    people.profile_save(form=form, actor=stage_admin)
    event = AuditEvent.objects.get(action="user.profile_changed")
    assert event.details["mlflow_user"] == {"before": "", "after": "r.tester"}
    assert event.actor_username == "sam"


def test_an_approval_the_author_gave_before_the_rule_stops_counting(requester, reviewer, reviewer2):
    Stage.objects.filter(name="Production").update(required_approvals=2)
    Profile.objects.create(user=reviewer2, mlflow_user="")
    request = file(requester, run_user="rex")
    services.review_approve(request=request, reviewer=reviewer)
    services.review_approve(request=request, reviewer=make_user("vera", "Reviewers"))
    request.refresh_from_db()
    assert len(policy.counting_approvals(request)) == 2
    Stage.objects.filter(name="Production").update(independent_validation=True)
    request.refresh_from_db()
    counting = policy.counting_approvals(request)
    assert [r.reviewer.username for r in counting] == ["vera"]
    assert [policy.approval_counts(r, request) for r in request.reviews.order_by("pk")] == [False, True]


def test_the_worker_sends_back_to_pending_a_request_approved_by_its_author_before_the_rule(
    requester, reviewer
):
    Stage.objects.filter(name="Production").update(required_approvals=2)
    request = file(requester, run_user="rex")
    services.review_approve(request=request, reviewer=reviewer)
    request = services.review_approve(request=request, reviewer=make_user("vera", "Reviewers"))
    assert request.status == "approved"
    Stage.objects.filter(name="Production").update(independent_validation=True)

    # The apply re-reads the approvals before any MLflow call: rex's no longer counts.
    assert services.promotion_apply(request_id=request.pk) == "reopened"

    request.refresh_from_db()
    assert request.status == "pending"
    assert AuditEvent.objects.filter(request_id=request.pk, action="request.reopened").exists()


def test_a_version_logged_in_mlflow_by_the_reviewer_is_theirs(registry, model_name, requester, reviewer):
    Stage.objects.filter(name="Staging").update(independent_validation=True)
    make_version(registry.client(), model_name, user="Rex")
    request = services.promotion_request_file(
        model_name=model_name, version=1, stage_name="Staging", requested_by=requester, justification="x"
    )
    assert request.version.run_user == "Rex"  # filled by the sync the filing ran
    assert policy.decide_refusal(reviewer, request).message == (
        "You are the author of this version (MLflow user 'Rex'); Staging needs an independent validator."
    )
