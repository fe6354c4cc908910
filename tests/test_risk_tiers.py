"""Risk tiers: a registered model's tag raises what a stage needs (approvals, an approval from a
group, a signature); the request page, the API and the worker hold a request to the stricter of
its filing-time tier and the model's tier now."""

import re

import pytest
from django.contrib.auth.models import Group, Permission

from promotions import policy, services, tokens
from promotions.errors import SignatureRequired, TransientApplyError
from promotions.models import AuditEvent, PromotionRequest, Review, RiskTierRule
from registry_sync.models import RegisteredModel, SyncRun
from registry_sync.services import sync_registry
from tests.apply_helpers import approved_request, registry_with_production
from tests.conftest import make_user
from tests.factories import mirror_model, stage, version
from tests.registry_helpers import make_version
from tests.test_stage_admin import form as stage_form

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status


@pytest.fixture
def validators(db):
    return Group.objects.create(name="Model validators")


@pytest.fixture
def validator(validators):
    # A validator approves for Production like any reviewer, and is one of the validators.
    user = make_user("val", "Reviewers")
    user.groups.add(validators)
    return user


@pytest.fixture
def high_rule(validators):
    return RiskTierRule.objects.create(
        stage=stage("Production"),
        tier="high",
        min_approvals=3,
        required_group=validators,
        signature_required=True,
    )


def tag(model: RegisteredModel, tier) -> None:
    tags = {"owner": "forecasting"}
    if tier is not None:
        tags["risk_tier"] = tier
    RegisteredModel.objects.filter(pk=model.pk).update(tags=tags)


def file(requester, *, tier=None, name=None) -> PromotionRequest:
    model = mirror_model(name, {1: {"current_stage": "Staging"}})
    tag(model, tier)
    return services.promotion_request_create(
        version=version(model, 1), stage=stage("Production"), requested_by=requester, justification="go"
    )


def fresh(request: PromotionRequest) -> PromotionRequest:
    return PromotionRequest.objects.select_related("version__model", "stage").get(pk=request.pk)


# --- the rules in force -----------------------------------------------------------------------


def test_a_model_without_a_tier_follows_the_stage(requester, high_rule):
    rules = policy.rules_in_force(fresh(file(requester)))
    assert (rules.tier, rules.approvals, rules.required_groups, rules.signature_required) == (
        "",
        2,
        (),
        False,
    )
    assert rules.summary == "2 approvals"


def test_the_tier_s_rule_raises_the_stage_s(requester, high_rule, validators):
    request = fresh(file(requester, tier="high"))
    assert request.risk_tier_at_filing == "high"
    rules = policy.rules_in_force(request)
    assert rules.approvals == 3
    assert rules.required_groups == ((validators.pk, "Model validators"),)
    assert rules.signature_required
    assert rules.summary == "3 approvals, at least one from Model validators, signed"
    assert policy.required_approvals(request) == 3


def test_a_tier_s_rule_never_lowers_the_stage_s(requester, validators):
    RiskTierRule.objects.create(stage=stage("Production"), tier="low", min_approvals=1)
    assert policy.rules_in_force(fresh(file(requester, tier="low"))).approvals == 2


@pytest.mark.parametrize("value", ["  HIGH ", "High", "high\n"])
def test_tiers_are_compared_trimmed_and_ignoring_case(requester, high_rule, value):
    request = fresh(file(requester, tier=value))
    assert request.risk_tier_at_filing == "high"
    assert policy.rules_in_force(request).approvals == 3


def test_an_unknown_tier_follows_the_stage(requester, high_rule):
    rules = policy.rules_in_force(fresh(file(requester, tier="extreme")))
    assert (rules.tier, rules.approvals, rules.signature_required) == ("extreme", 2, False)


def test_the_stricter_of_the_filing_tier_and_the_tier_now_holds(requester, high_rule, validators):
    RiskTierRule.objects.create(stage=stage("Production"), tier="medium", min_approvals=4)
    request = file(requester, tier="medium")
    tag(request.version.model, "high")  # raised while open
    rules = policy.rules_in_force(fresh(request))
    # medium's 4 approvals, high's group and signature
    assert (rules.tier, rules.tier_at_filing, rules.approvals) == ("high", "medium", 4)
    assert rules.required_groups == ((validators.pk, "Model validators"),) and rules.signature_required
    assert rules.tier_label == "high (filed as medium)"
    # lowered back to nothing: the filing-time tier still holds
    tag(request.version.model, None)
    assert policy.rules_in_force(fresh(request)).approvals == 4


def test_a_rule_lowered_in_the_catalog_after_filing_does_not_lower_an_open_request(requester, high_rule):
    request = file(requester, tier="high")
    high_rule.delete()
    rules = policy.rules_in_force(fresh(request))
    assert (rules.approvals, rules.signature_required) == (3, True)


def test_a_group_rule_alone_asks_for_one_approval_on_an_automatic_stage(requester, reviewer, validators):
    staging = stage("Staging")
    staging.required_approvals = 0  # applied automatically once every check passes
    staging.save()
    RiskTierRule.objects.create(stage=staging, tier="high", required_group=validators)
    model = mirror_model(versions={1: {"current_stage": "None"}})
    tag(model, "high")
    request = services.promotion_request_create(
        version=version(model, 1), stage=staging, requested_by=requester, justification="go"
    )
    assert request.status == Status.PENDING
    assert policy.required_approvals(fresh(request)) == 1


# --- approving --------------------------------------------------------------------------------


def test_raising_the_tier_while_open_needs_more_approvals(requester, reviewer, reviewer2):
    RiskTierRule.objects.create(stage=stage("Production"), tier="high", min_approvals=3)
    request = file(requester, tier="low")
    services.review_approve(request=request, reviewer=reviewer)
    tag(request.version.model, "high")
    request = services.review_approve(request=fresh(request), reviewer=reviewer2)
    assert request.status == Status.PENDING  # 2 of 3
    third = make_user("ted", "Reviewers")
    request = services.review_approve(request=fresh(request), reviewer=third)
    assert request.status == Status.APPROVED
    event = AuditEvent.objects.filter(action="review.approved", request_id=request.pk).latest("sequence")
    assert (event.details["approvals"], event.details["required"]) == (3, 3)


def test_a_required_group_not_represented_blocks_completion(
    requester, reviewer, reviewer2, validator, validators
):
    RiskTierRule.objects.create(stage=stage("Production"), tier="high", required_group=validators)
    request = file(requester, tier="high")
    services.review_approve(request=request, reviewer=reviewer)
    request = services.review_approve(request=fresh(request), reviewer=reviewer2)
    assert request.status == Status.PENDING  # 2 of 2, none from Model validators
    assert policy.approval_shortfall(fresh(request)) == (
        "no approval that counts comes from Model validators yet"
    )
    request = services.review_approve(request=fresh(request), reviewer=validator)
    assert request.status == Status.APPROVED


def test_a_validator_who_is_no_approver_of_the_stage_does_not_count(
    requester, reviewer, reviewer2, validators
):
    outsider = make_user("ollie")
    outsider.groups.add(validators)  # a validator, but not in Production's approver groups
    RiskTierRule.objects.create(stage=stage("Production"), tier="high", required_group=validators)
    request = file(requester, tier="high")
    services.review_approve(request=request, reviewer=reviewer)
    services.review_approve(request=fresh(request), reviewer=reviewer2)
    assert policy.groups_missing(fresh(request), policy.counting_approvals(fresh(request))) == [
        "Model validators"
    ]


def test_a_tier_that_requires_a_signature_refuses_an_unsigned_decision(requester, reviewer, high_rule):
    request = file(requester, tier="high")
    with pytest.raises(SignatureRequired, match="Risk tier high requires a signed decision"):
        services.review_approve(request=request, reviewer=reviewer)
    assert not Review.objects.filter(request=request).exists()
    denied = AuditEvent.objects.get(action="auth.denied", request_id=request.pk)
    assert "risk tier high requires a signature" in denied.details["reason"]


def test_the_worker_reopens_a_request_whose_tier_was_raised_after_approval(requester, reviewer, reviewer2):
    RiskTierRule.objects.create(stage=stage("Production"), tier="high", min_approvals=3)
    request = file(requester, tier="low")
    services.review_approve(request=request, reviewer=reviewer)
    request = services.review_approve(request=fresh(request), reviewer=reviewer2)
    assert request.status == Status.APPROVED
    tag(request.version.model, "high")

    assert services.promotion_apply(request_id=request.pk) == "reopened"
    request.refresh_from_db()
    assert request.status == Status.PENDING
    assert "2 of the 3 approvals needed still count" in request.last_error


# --- pages and the API ------------------------------------------------------------------------


def test_the_request_page_shows_the_tier_and_the_rules_in_force(client, requester, reviewer, high_rule):
    request = file(requester, tier="high")
    client.force_login(reviewer)
    html = client.get(f"/requests/{request.pk}/").content.decode()
    assert "Decision (0 of 3 approvals)" in html
    assert (
        "Risk tier: <strong>high</strong>. "
        "Rules in force: 3 approvals, at least one from Model validators, signed." in html
    )
    # the tier signs: the decision form asks for the password and the meaning
    assert 'autocomplete="current-password"' in html and 'name="signature_token"' in html
    assert "risk tier high requires one" in html


def test_the_page_of_a_request_without_a_tier_says_nothing_of_tiers(client, requester, reviewer, high_rule):
    request = file(requester)
    client.force_login(reviewer)
    html = client.get(f"/requests/{request.pk}/").content.decode()
    assert "Risk tier" not in html and 'name="password"' not in html


def test_the_tier_signs_a_decision_made_on_the_page(client, requester, reviewer, high_rule):
    request = file(requester, tier="high")
    client.force_login(reviewer)
    html = client.get(f"/requests/{request.pk}/").content.decode()
    fields = {
        name: re.search(rf'name="{name}" value="([^"]*)"', html).group(1)
        for name in ("signature_token", "evidence_sha256")
    }
    body = {"decision": "approve", "comment": "fine", "password": "pw-rex", "meaning": "Approved for release"}
    response = client.post(f"/requests/{request.pk}/decide/", {**body, **fields})
    assert response.status_code == 302
    review = Review.objects.get(request=request)
    assert review.is_signed and review.signer_username == "rex"


def test_a_hostile_tier_is_shown_escaped_and_short(client, requester, reviewer):
    hostile = "<script>alert(1)</script>" + "x" * 10_000
    request = file(requester, tier=hostile)
    assert len(fresh(request).risk_tier_at_filing) == 64
    client.force_login(reviewer)
    response = client.get(f"/requests/{request.pk}/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "x" * 100 not in html
    assert client.get("/?tab=open").status_code == 200


def test_the_queue_counts_the_approvals_the_tier_needs(client, requester, reviewer2, high_rule):
    file(requester, tier="high")
    client.force_login(reviewer2)
    html = client.get("/?tab=open").content.decode()
    assert '<td data-label="Approvals">0/3</td>' in html


def test_the_queue_reads_the_tier_rules_once_whatever_the_rows(
    client, requester, reviewer2, high_rule, django_assert_num_queries
):
    for _ in range(3):
        file(requester, tier="high")
    client.force_login(reviewer2)
    client.get("/?tab=open")
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as few:
        client.get("/?tab=open")
    for _ in range(7):
        file(requester, tier="high")
    with django_assert_num_queries(len(few)):
        client.get("/?tab=open")


def test_the_api_gives_the_tier_and_the_rules(client, requester, reviewer, high_rule):
    request = file(requester, tier="high")
    _, secret = tokens.api_token_create(user=reviewer, name="ci")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    body = client.get(f"/api/requests/{request.pk}", **headers).json()
    assert body["risk_tier"] == "high"
    assert body["required_approvals"] == 3
    assert body["rules"] == {
        "tier": "high",
        "tier_at_filing": "high",
        "approvals": 3,
        "required_groups": ["Model validators"],
        "signature_required": True,
        "summary": "3 approvals, at least one from Model validators, signed",
        "sentences": [
            "Stage Production: 2 approvals",
            "Tier high when filed: 3 approvals, at least one from Model validators, signed",
        ],
    }
    response = client.post(
        f"/api/requests/{request.pk}/approve", {}, content_type="application/json", **headers
    )
    assert response.status_code == 403
    assert response.json()["code"] == "signature_required"
    assert not Review.objects.filter(request=request).exists()


# --- the stage catalog ------------------------------------------------------------------------


@pytest.fixture
def admin_client(client, stage_admin):
    stage_admin.user_permissions.set(Permission.objects.filter(codename__endswith="_stage"))
    client.force_login(stage_admin)
    return client


def production_form(rows: list[dict], *, initial: int = 0) -> dict:
    production = stage("Production")
    data = stage_form(
        name="Production",
        description=production.description,
        mlflow_stage="Production",
        mlflow_alias="",
        required_approvals="2",
        archive_existing="on",
        checks="",
        request_ttl="7 00:00:00",
        position="20",
    )
    data["risk_tier_rules-TOTAL_FORMS"] = str(len(rows))
    data["risk_tier_rules-INITIAL_FORMS"] = str(initial)
    for i, row in enumerate(rows):
        data.update({f"risk_tier_rules-{i}-{key}": value for key, value in row.items()})
        data[f"risk_tier_rules-{i}-stage"] = str(production.pk)
    return data


def test_a_stage_admin_adds_a_tier_rule_on_the_stage_page_and_it_is_audited(admin_client, validators):
    production = stage("Production")
    assert (
        "risk_tier_rules-TOTAL_FORMS"
        in admin_client.get(f"/admin/promotions/stage/{production.pk}/change/").content.decode()
    )
    row = {
        "tier": " High ",
        "min_approvals": "3",
        "required_group": str(validators.pk),
        "signature_required": "on",
    }
    response = admin_client.post(f"/admin/promotions/stage/{production.pk}/change/", production_form([row]))
    assert response.status_code == 302, response.content.decode()[:3000]
    rule = RiskTierRule.objects.get(stage=production)
    assert (rule.tier, rule.min_approvals, rule.required_group, rule.signature_required) == (
        "high",
        3,
        validators,
        True,
    )
    event = AuditEvent.objects.get(action="stage.changed", to_stage="Production")
    assert event.meaning == "Stage Production changed: risk tier rules"
    assert event.details["changes"]["risk_tiers"] == {
        "before": {},
        "after": {"high": {"approvals": 3, "group": "Model validators", "signature": True}},
    }
    assert "lowered" not in event.details


def test_lowering_or_removing_a_tier_rule_is_a_lowered_policy(admin_client, high_rule):
    url = f"/admin/promotions/stage/{high_rule.stage_id}/change/"
    row = {"id": str(high_rule.pk), "tier": "high", "min_approvals": "1", "required_group": ""}
    assert admin_client.post(url, production_form([row], initial=1)).status_code == 302
    event = AuditEvent.objects.filter(action="stage.changed").latest("sequence")
    assert event.details["lowered"] == [
        "risk tier high: approvals needed 3 → 1",
        "risk tier high: an approval from Model validators no longer required",
        "risk tier high: decisions no longer signed",
    ]
    row = {**row, "DELETE": "on"}
    assert admin_client.post(url, production_form([row], initial=1)).status_code == 302
    assert not RiskTierRule.objects.exists()
    event = AuditEvent.objects.filter(action="stage.changed").latest("sequence")
    assert event.details["lowered"] == ["risk tier high: rule removed"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"tier": "high", "min_approvals": "0"}, "A tier rule asks for something"),
        ({"tier": "   ", "min_approvals": "2"}, "This field is required"),
        ({"tier": "x" * 65, "min_approvals": "2"}, "at most 64 characters"),
    ],
)
def test_a_tier_rule_that_says_nothing_is_refused(admin_client, row, message):
    url = f"/admin/promotions/stage/{stage('Production').pk}/change/"
    response = admin_client.post(url, production_form([row]))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not RiskTierRule.objects.exists()


def test_two_rules_for_one_tier_are_refused(admin_client):
    url = f"/admin/promotions/stage/{stage('Production').pk}/change/"
    rows = [{"tier": "high", "min_approvals": "3"}, {"tier": "HIGH", "min_approvals": "4"}]
    response = admin_client.post(url, production_form(rows))
    assert response.status_code == 200
    assert not RiskTierRule.objects.exists()


def test_the_stage_catalog_states_the_tier_rules_in_plain_words(client, requester, high_rule):
    client.force_login(requester)
    html = client.get("/stages/").content.decode()
    assert (
        "Models tagged risk_tier=high need 3 approvals, at least one from Model validators, signed." in html
    )
    assert "A model whose tier changes while a request is open is held to the stricter tier." in html
    assert "no tier rules: every model follows the stage's own rules" in html  # Staging


def test_the_tier_tag_is_a_setting(client, requester, high_rule, settings):
    settings.RISK_TIER_TAG = "criticality"
    request = file(requester, tier="high")  # tagged risk_tier, not criticality
    assert policy.rules_in_force(fresh(request)).approvals == 2
    RegisteredModel.objects.filter(pk=request.version.model_id).update(tags={"criticality": "high"})
    assert policy.rules_in_force(fresh(request)).approvals == 3
    client.force_login(requester)
    assert "Models tagged criticality=high need" in client.get("/stages/").content.decode()


# --- the tier at apply, read from MLflow --------------------------------------------------------


def test_the_apply_reads_the_tier_from_mlflow_on_a_stage_with_tier_rules(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    registry_with_production(client, model_name)
    RiskTierRule.objects.create(stage=stage("Production"), tier="high", min_approvals=3)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    client.set_registered_model_tag(model_name, "risk_tier", "high")

    assert services.promotion_apply(request_id=request.pk) == "reopened"
    assert RegisteredModel.objects.get(name=model_name).tags["risk_tier"] == "high"
    assert fresh(request).status == Status.PENDING

    # Lowered in MLflow again: the rule of the tier at filing (none) and now (none) lets it through.
    client.delete_registered_model_tag(model_name, "risk_tier")
    request = services.review_approve(request=fresh(request), reviewer=make_user("ted", "Reviewers"))
    assert request.status == Status.APPROVED
    assert services.promotion_apply(request_id=request.pk) == "applied"


def test_mlflow_not_answering_the_tier_read_leaves_the_apply_to_its_own_retries(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    registry_with_production(registry.client(), model_name)
    RiskTierRule.objects.create(stage=stage("Production"), tier="high", min_approvals=3)
    request = approved_request(model_name, requester, [reviewer, reviewer2])
    mlflow_proxy.mode = "down"
    with pytest.raises(TransientApplyError):
        services.promotion_apply(request_id=request.pk)
    assert fresh(request).status == Status.APPROVED


def test_the_request_form_says_what_the_model_s_tier_adds(client, requester, high_rule):
    model = mirror_model(versions={1: {"current_stage": "Staging"}})
    tag(model, "HIGH")
    client.force_login(requester)
    body = client.get(f"/requests/new/?model={model.name}&version=1&stage=Production").content.decode()
    assert "Its risk tier raises that: Models tagged risk_tier=high need 3 approvals" in body


def test_the_stage_api_lists_the_tier_rules(client, requester, high_rule):
    _, secret = tokens.api_token_create(user=requester, name="ci")
    body = client.get("/api/stages/production", HTTP_AUTHORIZATION=f"Bearer {secret}").json()
    assert body["risk_tiers"] == [
        {
            "tier": "high",
            "min_approvals": 3,
            "required_group": "Model validators",
            "signature_required": True,
            "summary": "Models tagged risk_tier=high need 3 approvals, at least one from Model validators, "
            "signed",
        }
    ]


def test_the_rules_read_as_words():
    assert policy.describe_rule(approvals=0, groups=[], signed=False) == "no approval"
    assert policy.describe_rule(approvals=1, groups=[], signed=True) == "1 approval, signed"
    assert policy.describe_rule(approvals=0, groups=["Model validators"], signed=False) == (
        "at least one from Model validators"
    )


def test_the_sync_keeps_the_model_s_tier_fresh(registry, model_name):
    client = registry.client()
    make_version(client, model_name)
    client.set_registered_model_tag(model_name, "risk_tier", "low")
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    assert policy.model_tier(RegisteredModel.objects.get(name=model_name)) == "low"
    client.set_registered_model_tag(model_name, "risk_tier", "high")
    sync_registry(trigger=SyncRun.Trigger.COMMAND)
    assert policy.model_tier(RegisteredModel.objects.get(name=model_name)) == "high"
