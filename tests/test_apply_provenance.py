"""The provenance a promotion leaves in MLflow survives the next one, at one call more at most."""

import json

import pytest
from django.contrib.auth.models import Group

from promotions import provenance, services
from promotions.models import PromotionRequest, Stage
from tests.apply_helpers import approved_request
from tests.registry_helpers import make_version, stage

pytestmark = pytest.mark.django_db

SEARCH = ("GET", "model-versions/search")
TRANSITION = ("POST", "model-versions/transition-stage")
SET_TAG = ("POST", "model-versions/set-tag")
DELETE_TAG = ("DELETE", "model-versions/delete-tag")
TAGS = [SET_TAG] * 4  # the promoted version's: its stage record and the latest promotion's


def _calls_since(mlflow_proxy, before):
    return [(method, path.split("/mlflow/", 1)[-1]) for method, path in mlflow_proxy.calls[before:]]


def _two_versions_in_staging(client, name):
    for accuracy in (0.90, 0.93):
        make_version(client, name, metrics={"accuracy": accuracy})
    stage(client, name, 1, "Staging")
    stage(client, name, 2, "Staging")


def _record(client, name, number, stage_name):
    return json.loads(client.get_model_version(name, str(number)).tags[f"promotion.stage.{stage_name}"])


def _champion():
    champion = Stage.objects.create(
        name="Champion", position=25, mlflow_alias="champion", required_approvals=1
    )
    champion.approver_groups.add(Group.objects.get(name="Reviewers"))
    return champion


def _apply(request):
    assert services.promotion_apply(request_id=request.pk) == "applied"


def test_the_version_archived_by_the_next_promotion_keeps_its_record_closed(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    _two_versions_in_staging(client, model_name)
    first = approved_request(model_name, requester, [reviewer, reviewer2], number=1)
    _apply(first)
    opened = _record(client, model_name, 1, "Production")
    second = approved_request(model_name, requester, [reviewer, reviewer2], number=2)

    before = len(mlflow_proxy.calls)
    _apply(second)

    # one call more than a promotion that displaces nobody: the archived version's record
    assert _calls_since(mlflow_proxy, before) == [SEARCH, TRANSITION, SET_TAG, *TAGS]
    v1, v2 = client.get_model_version(model_name, "1"), client.get_model_version(model_name, "2")
    assert (v1.current_stage, v2.current_stage) == ("Archived", "Production")
    assert json.loads(v1.tags["promotion.stage.Production"]) == {
        **opened,
        "until": v2.tags["promotion.applied_at"],
        "displaced_by": second.pk,
    }
    assert opened == {"request": first.pk, "approved_by": ["rex", "rita"], "at": opened["at"]}
    assert "promotion.stage" not in v1.tags
    assert _record(client, model_name, 2, "Production") == {
        "request": second.pk,
        "approved_by": ["rex", "rita"],
        "at": v2.tags["promotion.applied_at"],
    }


def test_a_holder_tagged_before_the_stage_records_loses_its_stage_tag(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    _two_versions_in_staging(client, model_name)
    stage(client, model_name, 1, "Production")
    for key, value in {
        "promotion.request_id": "7",
        "promotion.stage": "Production",
        "promotion.approved_by": "Rex Tester",
        "promotion.applied_at": "2026-11-01T10:00:00.000000+00:00",
    }.items():
        client.set_model_version_tag(model_name, "1", key, value)
    request = approved_request(model_name, requester, [reviewer, reviewer2], number=2)

    before = len(mlflow_proxy.calls)
    _apply(request)

    assert _calls_since(mlflow_proxy, before) == [SEARCH, TRANSITION, DELETE_TAG, *TAGS]
    v1 = client.get_model_version(model_name, "1")
    assert "promotion.stage" not in v1.tags
    assert v1.tags["promotion.request_id"] == "7"  # the rest of its provenance stays


def test_a_promoted_version_tagged_before_the_stage_records_loses_its_stage_tag(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    _two_versions_in_staging(client, model_name)
    client.set_model_version_tag(model_name, "2", "promotion.stage", "Staging")
    request = approved_request(model_name, requester, [reviewer, reviewer2], number=2)

    before = len(mlflow_proxy.calls)
    _apply(request)

    # once per version tagged before the upgrade: it would say v2 was last promoted to Staging
    assert _calls_since(mlflow_proxy, before) == [SEARCH, TRANSITION, DELETE_TAG, *TAGS]
    v2 = client.get_model_version(model_name, "2")
    assert "promotion.stage" not in v2.tags
    assert v2.tags["promotion.request_id"] == str(request.pk)


def test_a_version_promoted_on_to_an_alias_keeps_its_production_record(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    _two_versions_in_staging(client, model_name)
    _champion()
    production = approved_request(model_name, requester, [reviewer, reviewer2], number=2)
    _apply(production)
    champion = approved_request(model_name, requester, [reviewer], number=2, target="Champion")
    _apply(champion)

    v2 = client.get_model_version(model_name, "2")
    assert (v2.current_stage, v2.aliases) == ("Production", ["champion"])
    assert _record(client, model_name, 2, "Production")["request"] == production.pk
    assert "until" not in _record(client, model_name, 2, "Production")
    assert _record(client, model_name, 2, "Champion") == {
        "request": champion.pk,
        "approved_by": ["rex"],
        "at": v2.tags["promotion.applied_at"],
    }
    assert v2.tags["promotion.request_id"] == str(champion.pk)


def test_the_previous_alias_holder_has_its_record_closed(
    mlflow_proxy, registry, model_name, requester, reviewer
):
    client = registry.client()
    _two_versions_in_staging(client, model_name)
    _champion()
    first = approved_request(model_name, requester, [reviewer], number=1, target="Champion")
    _apply(first)
    second = approved_request(model_name, requester, [reviewer], number=2, target="Champion")

    before = len(mlflow_proxy.calls)
    _apply(second)

    # the holder's tags come with the alias lookup: no read more, one write more
    assert _calls_since(mlflow_proxy, before) == [
        ("GET", "model-versions/get"),
        ("GET", "registered-models/alias"),
        ("POST", "registered-models/alias"),
        SET_TAG,
        *TAGS,
    ]
    closed = _record(client, model_name, 1, "Champion")
    assert (closed["request"], closed["displaced_by"]) == (first.pk, second.pk)
    assert "until" not in _record(client, model_name, 2, "Champion")


def test_holders_left_in_their_stage_are_not_displaced(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    _two_versions_in_staging(client, model_name)
    Stage.objects.filter(name="Production").update(archive_existing=False)
    _apply(approved_request(model_name, requester, [reviewer, reviewer2], number=1))
    request = approved_request(model_name, requester, [reviewer, reviewer2], number=2)

    before = len(mlflow_proxy.calls)
    _apply(request)

    assert _calls_since(mlflow_proxy, before) == [SEARCH, TRANSITION, *TAGS]
    assert client.get_model_version(model_name, "1").current_stage == "Production"
    assert "until" not in _record(client, model_name, 1, "Production")


def test_approvers_are_recorded_by_username_whatever_their_printed_names(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    _two_versions_in_staging(client, model_name)
    reviewer.first_name, reviewer.last_name = "Rexford", "Renamed-Later"
    reviewer.save()
    request = approved_request(model_name, requester, [reviewer, reviewer2], number=2)
    _apply(request)

    v2 = client.get_model_version(model_name, "2")
    assert v2.tags["promotion.approved_by"] == "rex,rita"
    assert _record(client, model_name, 2, "Production")["approved_by"] == ["rex", "rita"]


def test_an_automatic_promotion_is_recorded_as_such(mlflow_proxy, registry, model_name, requester):
    client = registry.client()
    make_version(client, model_name, metrics={"accuracy": 0.9})
    Stage.objects.filter(name="Staging").update(required_approvals=0)
    request = approved_request(model_name, requester, [], number=1, target="Staging")
    _apply(request)

    v1 = client.get_model_version(model_name, "1")
    assert v1.tags["promotion.approved_by"] == "automatic"
    assert _record(client, model_name, 1, "Staging")["approved_by"] == []


def test_a_crash_after_the_move_closes_the_displaced_record_on_retry(
    mlflow_proxy, registry, model_name, requester, reviewer, reviewer2
):
    client = registry.client()
    _two_versions_in_staging(client, model_name)
    _apply(approved_request(model_name, requester, [reviewer, reviewer2], number=1))
    request = approved_request(model_name, requester, [reviewer, reviewer2], number=2)
    # What the crashed attempt did: it kept the holders it saw, moved the version, then died.
    PromotionRequest.objects.filter(pk=request.pk).update(
        observed_holders={"stage": [1], "alias": [], "writing": ["stage"]}
    )
    stage(client, model_name, 2, "Production", archive=True)

    _apply(request)

    assert _record(client, model_name, 1, "Production")["displaced_by"] == request.pk
    assert _record(client, model_name, 2, "Production")["request"] == request.pk
    # and a second completion finds it all written
    PromotionRequest.objects.filter(pk=request.pk).update(status=PromotionRequest.Status.APPROVED)
    before = len(mlflow_proxy.calls)
    _apply(request)
    assert all(method == "GET" for method, _ in _calls_since(mlflow_proxy, before))


@pytest.mark.parametrize(
    "stage_name, key",
    [
        ("Production", "promotion.stage.Production"),
        ("Bench Champion", "promotion.stage.Bench Champion"),
        ("EU/Prod: live", "promotion.stage.EU_Prod_ live"),
        ("../stage", "promotion.stage..._stage"),
        ("applied_at", "promotion.stage.applied_at"),  # never the latest promotion's tag
    ],
)
def test_every_stage_name_makes_a_tag_key_mlflow_accepts(registry, model_name, stage_name, key):
    client = registry.client()
    make_version(client, model_name, run=False)

    assert provenance.record_key(stage_name) == key
    client.set_model_version_tag(model_name, "1", key, "{}")
    assert client.get_model_version(model_name, "1").tags[key] == "{}"
