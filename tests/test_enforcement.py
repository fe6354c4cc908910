"""Enforcement per stage: a revert stage has the worker undo what changed outside the workflow.

Reverts run against the real MLflow server (through the counting proxy where writes are counted
or refused); the worker tests run the real worker process on the configured broker.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from bench.common import wait_until
from promotions import catalog, history, notifications, outbox, selectors
from promotions.models import AuditEvent, DriftRevert, PromotionRequest, Stage, WebhookEndpoint
from promotions.services import enforcement
from registry_sync.models import DriftEvent, ModelVersion, RegisteredModel, SyncRun
from registry_sync.services import sync_registry
from tests.conftest import make_user
from tests.factories import mirror_model, version
from tests.registry_helpers import make_version
from tests.registry_helpers import stage as transition
from tests.test_drift import announce, request_of_ours
from tests.test_stage_admin import form
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.django_db
TRANSITION = "/model-versions/transition-stage"
ALIAS = "/registered-models/alias"
Status = DriftRevert.Status


def sync(name: str) -> SyncRun:
    return sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=name)


def enforce(name: str, mode: str = "revert") -> Stage:
    stage = Stage.objects.get(name=name)
    stage.enforcement = mode
    stage.save()
    return stage


def champion(mode: str = "revert") -> Stage:
    return Stage.objects.create(name="Champion", position=40, mlflow_alias="champion", enforcement=mode)


def reverts(name: str) -> list[DriftRevert]:
    return list(
        DriftRevert.objects.filter(drift_event__model__name=name).select_related("drift_event").order_by("pk")
    )


def revert_all(name: str) -> list[str]:
    return [enforcement.drift_revert(revert_id=r.pk) for r in reverts(name)]


def stages_of(client, name: str) -> dict[int, str]:
    return {int(v.version): v.current_stage for v in client.search_model_versions(f"name = '{name}'")}


def alias_holder(client, name: str, alias: str = "champion") -> int | None:
    holder = client.get_registered_model(name).aliases.get(alias)
    return int(holder) if holder is not None else None


@pytest.fixture
def production_model(registry, model_name):
    """v1 in Production, v2 with no stage, mirrored."""
    client = registry.client()
    make_version(client, model_name)
    make_version(client, model_name)
    transition(client, model_name, 1, "Production")
    sync(model_name)
    return client


@pytest.fixture
def champion_model(registry, model_name):
    """v1 holds @champion, v2 nothing, mirrored."""
    client = registry.client()
    make_version(client, model_name)
    make_version(client, model_name)
    client.set_registered_model_alias(model_name, "champion", "1")
    sync(model_name)
    return client


# --- revert, kind by kind ---------------------------------------------------------------------


def test_a_version_moved_into_a_revert_stage_is_sent_back_and_the_holder_restored(
    production_model, model_name, mlflow_proxy
):
    enforce("Production")
    transition(production_model, model_name, 2, "Production", archive=True)  # by hand; archives v1

    run = sync(model_name)

    assert run.drift == 2
    assert [r.status for r in reverts(model_name)] == [Status.PENDING, Status.PENDING]
    assert stages_of(production_model, model_name) == {1: "Archived", 2: "Production"}  # nothing yet

    outcomes = revert_all(model_name)

    assert stages_of(production_model, model_name) == {1: "Production", 2: "None"}
    assert sorted(outcomes) == ["already_in_place", "reverted"]
    assert mlflow_proxy.writes(TRANSITION) == 2
    entries = AuditEvent.objects.filter(action="registry.reverted", model_name=model_name).order_by(
        "sequence"
    )
    first = entries[0].details
    assert first["outcome"] == "reverted"
    assert first["change"]["kind"] == "stage"
    assert first["changed_by"] == "unknown" or first["mlflow_version_user_id"]
    assert {(c["version"], c["to"]) for c in first["restored"]} == {(2, "None"), (1, "Production")}
    assert not DriftEvent.objects.filter(model__name=model_name, resolved=False).exists()
    assert not RegisteredModel.objects.get(name=model_name).has_drift

    # The revert's own moves are ours: the next sync sees them and flags nothing.
    again = sync(model_name)
    assert again.drift == 0
    assert DriftEvent.objects.filter(model__name=model_name).count() == 2


def test_a_version_moved_out_of_a_revert_stage_is_put_back(production_model, model_name):
    enforce("Production")
    transition(production_model, model_name, 1, "Staging")
    sync(model_name)

    assert revert_all(model_name) == ["reverted"]

    assert stages_of(production_model, model_name)[1] == "Production"
    assert sync(model_name).drift == 0
    # The history reads the revert from the log: v1 left Production by hand, and holds it again.
    model = RegisteredModel.objects.get(name=model_name)
    production = [e.interval for e in history.model_history(model).entries if e.binding.name == "Production"]
    assert [(i.version, i.source.kind, i.until is None) for i in production][-2:] == [
        (1, "before_record", False),
        (1, "revert", True),
    ]


def test_an_alias_moved_by_hand_goes_back_to_its_holder(champion_model, model_name, mlflow_proxy):
    champion()
    champion_model.set_registered_model_alias(model_name, "champion", "2")
    sync(model_name)

    assert revert_all(model_name) == ["reverted"]

    assert alias_holder(champion_model, model_name) == 1
    assert mlflow_proxy.writes(ALIAS) == 1
    assert sync(model_name).drift == 0
    assert not RegisteredModel.objects.get(name=model_name).has_drift


def test_an_alias_deleted_by_hand_is_set_again(champion_model, model_name):
    champion()
    champion_model.delete_registered_model_alias(model_name, "champion")
    sync(model_name)

    assert revert_all(model_name) == ["reverted"]

    assert alias_holder(champion_model, model_name) == 1
    assert sync(model_name).drift == 0


def test_an_alias_set_where_nobody_held_it_is_deleted(registry, model_name):
    client = registry.client()
    make_version(client, model_name)
    sync(model_name)
    champion()
    client.set_registered_model_alias(model_name, "champion", "1")
    sync(model_name)

    assert revert_all(model_name) == ["reverted"]

    assert alias_holder(client, model_name) is None
    assert sync(model_name).drift == 0


def test_an_intrusion_right_after_a_revert_is_not_taken_for_the_record(registry, model_name):
    """The revert writes the record into the mirror at once: a second intruder that comes before
    any sync has seen the revert is compared with the record, not with the first intruder."""
    client = registry.client()
    for _ in range(3):
        make_version(client, model_name)
    sync(model_name)
    champion()
    client.set_registered_model_alias(model_name, "champion", "2")  # nobody held it
    sync(model_name)
    assert revert_all(model_name) == ["reverted"]
    assert alias_holder(client, model_name) is None
    assert RegisteredModel.objects.get(name=model_name).aliases == {}

    client.set_registered_model_alias(model_name, "champion", "3")  # before any sync
    run = sync(model_name)

    assert run.drift == 1
    latest = reverts(model_name)[-1]
    assert (latest.drift_event.before, latest.drift_event.after) == ("", "3")
    assert enforcement.drift_revert(revert_id=latest.pk) == "reverted"
    assert alias_holder(client, model_name) is None  # deleted again, not handed to v2


def test_a_revert_writes_the_record_into_the_mirror(production_model, model_name):
    enforce("Production")
    transition(production_model, model_name, 2, "Production", archive=True)  # archives v1
    sync(model_name)
    revert_all(model_name)

    mirrored = dict(
        ModelVersion.objects.filter(model__name=model_name).values_list("version", "current_stage")
    )
    assert mirrored == {1: "Production", 2: "None"}


def test_a_stage_in_detect_mode_only_flags(production_model, model_name, mlflow_proxy):
    transition(production_model, model_name, 2, "Production", archive=True)
    sync(model_name)

    assert {r.status for r in reverts(model_name)} == {Status.DETECTED}
    assert enforcement.reverts_sweep(now=timezone.now() + timedelta(days=1)) == []
    assert set(revert_all(model_name)) == {"skipped (detected)"}
    assert stages_of(production_model, model_name) == {1: "Archived", 2: "Production"}
    assert mlflow_proxy.writes(TRANSITION) == 0
    assert RegisteredModel.objects.get(name=model_name).has_drift


# --- idempotence, applies in progress, refusals -------------------------------------------------


def test_a_revert_run_twice_writes_mlflow_once(production_model, model_name, mlflow_proxy):
    enforce("Production")
    transition(production_model, model_name, 1, "Staging")
    sync(model_name)
    (revert,) = reverts(model_name)

    assert enforcement.drift_revert(revert_id=revert.pk) == "reverted"
    assert enforcement.drift_revert(revert_id=revert.pk) == "skipped (reverted)"
    # A redelivered task after a crash between the write and the record re-reads MLflow first.
    DriftRevert.objects.filter(pk=revert.pk).update(status=Status.PENDING)
    assert enforcement.drift_revert(revert_id=revert.pk) == "already_in_place"

    assert mlflow_proxy.writes(TRANSITION) == 1
    assert stages_of(production_model, model_name)[1] == "Production"


def test_a_revert_waits_while_an_apply_holds_the_binding(
    production_model, model_name, mlflow_proxy, requester
):
    enforce("Production")
    transition(production_model, model_name, 2, "Production", archive=True)
    sync(model_name)
    model = RegisteredModel.objects.get(name=model_name)
    applying = request_of_ours(
        version(model, 2), Stage.objects.get(name="Production"), requester, status="applying"
    )
    applying.lease_token, applying.lease_expires_at = "live", timezone.now() + timedelta(minutes=5)
    applying.updated_at = timezone.now() - timedelta(days=1)  # its changes are not "ours" by time
    applying.save()
    first = reverts(model_name)[0]

    with pytest.raises(enforcement.RevertDeferred) as waited:
        enforcement.drift_revert(revert_id=first.pk)

    assert 0 < waited.value.delay
    first.refresh_from_db()
    assert first.status == Status.PENDING and f"request #{applying.pk}" in first.last_error
    assert mlflow_proxy.writes(TRANSITION) == 0

    PromotionRequest.objects.filter(pk=applying.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert enforcement.drift_revert(revert_id=first.pk) == "reverted"
    assert stages_of(production_model, model_name) == {1: "Production", 2: "None"}


def test_a_revert_mlflow_refuses_fails_visibly(production_model, model_name, mlflow_proxy, client, reviewer):
    enforce("Production")
    transition(production_model, model_name, 1, "Staging")
    sync(model_name)
    (revert,) = reverts(model_name)
    mlflow_proxy.mode = "deny"

    # Refused: visible at once, and tried again with the apply's backoff.
    with pytest.raises(enforcement.RevertDeferred) as deferred:
        enforcement.drift_revert(revert_id=revert.pk)
    assert deferred.value.delay > 0
    revert.refresh_from_db()
    assert revert.status == Status.PENDING and "refused the credentials" in revert.last_error
    entry = AuditEvent.objects.get(action="registry.revert_failed", model_name=model_name)
    assert entry.details["outcome"] == "refused" and "refused the credentials" in entry.details["reason"]
    assert DriftEvent.objects.filter(model__name=model_name, resolved=False).count() == 1
    assert stages_of(production_model, model_name)[1] == "Staging"
    client.force_login(reviewer)
    page = client.get(f"/models/{model_name}/").content.decode()
    assert "Revert failed:" in page and "refused the credentials" in page and "tries again" in page
    # MLflow's own answer, for whoever mends the credentials, folded away under the sentence.
    assert "PERMISSION_DENIED" in revert.last_error_detail
    assert "PERMISSION_DENIED" not in revert.last_error
    assert '<details class="error-detail"><summary>Details</summary><pre>' in page

    # Every attempt refused: it ends failed, in the log and on the page.
    while True:
        DriftRevert.objects.filter(pk=revert.pk).update(not_before=timezone.now())
        try:
            outcome = enforcement.drift_revert(revert_id=revert.pk)
            break
        except enforcement.RevertDeferred:
            continue
    assert outcome == "failed"
    revert.refresh_from_db()
    assert revert.status == Status.FAILED and revert.attempts == settings.PROMOTION_MAX_ATTEMPTS
    failures = AuditEvent.objects.filter(action="registry.revert_failed", model_name=model_name)
    assert [e.details["outcome"] for e in failures.order_by("sequence")][-1] == "failed"
    assert failures.count() == settings.PROMOTION_MAX_ATTEMPTS
    page = client.get(f"/models/{model_name}/").content.decode()
    assert "Revert failed:" in page and "tries again" not in page


def test_mlflow_down_during_a_revert_retries_with_the_apply_backoff(
    production_model, model_name, mlflow_proxy
):
    enforce("Production")
    transition(production_model, model_name, 1, "Staging")
    sync(model_name)
    (revert,) = reverts(model_name)
    mlflow_proxy.mode = "down"

    with pytest.raises(enforcement.RevertDeferred):
        enforcement.drift_revert(revert_id=revert.pk)

    revert.refresh_from_db()
    assert (revert.status, revert.attempts) == (Status.PENDING, 1)
    mlflow_proxy.mode = "pass"
    assert enforcement.drift_revert(revert_id=revert.pk) == "reverted"
    assert stages_of(production_model, model_name)[1] == "Production"


def test_a_request_applied_since_the_drift_is_not_undone(
    production_model, model_name, mlflow_proxy, requester
):
    enforce("Production")
    transition(production_model, model_name, 1, "Staging")
    sync(model_name)
    model = RegisteredModel.objects.get(name=model_name)
    applied = request_of_ours(version(model, 2), Stage.objects.get(name="Production"), requester)
    applied.applied_at = timezone.now() + timedelta(seconds=1)
    applied.save()

    assert revert_all(model_name) == ["superseded"]
    assert mlflow_proxy.writes(TRANSITION) == 0


def test_a_stage_back_in_detect_mode_leaves_the_drift_flagged(production_model, model_name, mlflow_proxy):
    enforce("Production")
    transition(production_model, model_name, 1, "Staging")
    sync(model_name)
    enforce("Production", "detect")

    assert revert_all(model_name) == ["not enforced"]

    assert reverts(model_name)[0].status == Status.DETECTED
    assert RegisteredModel.objects.get(name=model_name).has_drift
    assert mlflow_proxy.writes(TRANSITION) == 0


def test_a_lost_publish_is_swept(production_model, model_name, settings):
    enforce("Production")
    transition(production_model, model_name, 1, "Staging")
    sync(model_name)
    (revert,) = reverts(model_name)
    later = timezone.now() + timedelta(seconds=settings.PROMOTION_STUCK_AFTER_SECONDS + 1)

    assert enforcement.reverts_sweep() == []
    assert enforcement.reverts_sweep(now=later) == [revert.pk]


# --- the catalog ---------------------------------------------------------------------------------


def test_a_stage_admin_sets_enforcement_in_the_admin_audited_and_shown_on_the_stages_page(
    client, stage_admin
):
    stage_admin.user_permissions.set(Permission.objects.filter(codename__endswith="_stage"))
    client.force_login(stage_admin)
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
        enforcement="revert",
    )

    response = client.post(f"/admin/promotions/stage/{production.pk}/change/", data)

    assert response.status_code == 302, response.content.decode()[:3000]
    assert Stage.objects.get(pk=production.pk).enforcement == "revert"
    entry = AuditEvent.objects.get(action="stage.changed", to_stage="Production")
    assert entry.details["changes"]["enforcement"] == {"before": "detect", "after": "revert"}
    assert "reverted by the worker" in client.get("/stages/").content.decode()


# --- Request revert links -----------------------------------------------------------------------


def link(model_name: str, number: int, stage: str) -> str:
    return f"/requests/new/?model={model_name}&version={number}&stage={stage}&rollback=1"


def only_event(model) -> DriftEvent:
    (event,) = DriftEvent.objects.filter(model=model)
    return event


def test_revert_link_of_a_version_moved_into_a_stage_is_a_rollback_of_the_previous_holder():
    model = mirror_model(versions={1: {"current_stage": "Production"}, 2: {}})
    announce(model, version=2, kind="stage", before="None", after="Production")
    model.versions.filter(version=1).update(current_stage="Archived")  # the sync's own writes
    model.versions.filter(version=2).update(current_stage="Production")

    assert selectors.revert_link(only_event(model)) == link(model.name, 1, "Production")


def test_revert_link_of_a_version_moved_out_of_a_stage_puts_it_back():
    model = mirror_model(versions={3: {"current_stage": "Production"}})
    announce(model, version=3, kind="stage", before="Production", after="Staging")

    assert selectors.revert_link(only_event(model)) == link(model.name, 3, "Production")


def test_revert_link_of_an_alias_moved_or_deleted_is_the_previous_holder_back():
    champion("detect")
    moved = mirror_model(versions={1: {}, 2: {}}, aliases={"champion": 1})
    announce(moved, version=2, kind="alias", alias="champion", before="1", after="2")
    deleted = mirror_model(versions={1: {}}, aliases={"champion": 1})
    announce(deleted, version=1, kind="alias", alias="champion", before="1", after="")

    assert selectors.revert_link(only_event(moved)) == link(moved.name, 1, "Champion")
    assert selectors.revert_link(only_event(deleted)) == link(deleted.name, 1, "Champion")


def test_no_revert_link_where_no_request_can_undo_it():
    champion("detect")
    alias_set = mirror_model(versions={1: {}})
    announce(alias_set, version=1, kind="alias", alias="champion", before="", after="1")
    first_holder = mirror_model(versions={1: {}})
    announce(first_holder, version=1, kind="stage", before="None", after="Production")

    assert selectors.revert_link(only_event(alias_set)) is None
    assert selectors.revert_link(only_event(first_holder)) is None


def test_the_page_says_why_a_drift_has_no_revert_link(client, requester):
    champion("detect")
    model = mirror_model(versions={1: {}})
    announce(model, version=1, kind="alias", alias="champion", before="", after="1")
    client.force_login(requester)

    page = client.get(f"/models/{model.name}/").content.decode()

    assert "Request revert" not in page
    assert "No request can undo this" in page and "acknowledge it" in page


def test_the_model_page_shows_the_link_the_server_computed(client, requester):
    model = mirror_model(versions={3: {"current_stage": "Production"}})
    announce(model, version=3, kind="stage", before="Production", after="Staging")
    client.force_login(requester)

    page = client.get(f"/models/{model.name}/").content.decode()

    assert link(model.name, 3, "Production").replace("&", "&amp;") in page
    assert "Acknowledge" not in page  # stage admins only


def test_a_rollback_filed_from_the_link_is_granted_by_the_record(requester):
    model = mirror_model(versions={3: {"current_stage": "Production"}})
    announce(model, version=3, kind="stage", before="Production", after="Staging")
    number = version(model, 3)

    assert catalog.held_before(version=number, stage=Stage.objects.get(name="Production"))


# --- acknowledge ------------------------------------------------------------------------------


@pytest.fixture
def drifted():
    model = mirror_model(versions={3: {"current_stage": "Production"}})
    announce(model, version=3, kind="stage", before="Production", after="Staging")
    return model


def acknowledge(client, model, comment="moved on purpose for the incident"):
    return client.post(f"/drift/{only_event(model).pk}/acknowledge/", {"comment": comment})


def test_a_non_admin_may_not_acknowledge(client, drifted, reviewer):
    client.force_login(reviewer)

    assert acknowledge(client, drifted).status_code == 403

    assert not only_event(drifted).resolved
    denied = AuditEvent.objects.get(action="auth.denied")
    assert "acknowledge drift" in denied.meaning and denied.actor_username == "rex"


def test_acknowledging_needs_a_comment(client, drifted, stage_admin):
    client.force_login(stage_admin)

    response = acknowledge(client, drifted, comment="  ")

    assert response.status_code == 302
    assert not only_event(drifted).resolved
    assert not AuditEvent.objects.filter(action="registry.drift_acknowledged").exists()
    assert "a comment is required" in client.get(f"/models/{drifted.name}/").content.decode()


def test_an_acknowledged_drift_is_audited_and_the_banner_goes(client, drifted, stage_admin):
    client.force_login(stage_admin)
    assert "⚠ drift" in client.get(f"/models/{drifted.name}/").content.decode()

    assert acknowledge(client, drifted).status_code == 302

    assert only_event(drifted).resolved
    assert not RegisteredModel.objects.get(pk=drifted.pk).has_drift
    entry = AuditEvent.objects.get(action="registry.drift_acknowledged")
    assert entry.details["comment"] == "moved on purpose for the incident"
    assert entry.actor_username == "sam" and entry.model_name == drifted.name
    assert DriftRevert.objects.get(drift_event=only_event(drifted)).status == Status.ACKNOWLEDGED
    assert "⚠ drift" not in client.get(f"/models/{drifted.name}/").content.decode()


def test_acknowledging_calls_off_a_pending_revert():
    enforce("Production")
    model = mirror_model(versions={3: {"current_stage": "Production"}})
    announce(model, version=3, kind="stage", before="Production", after="Staging")
    admin = make_user("sally", "Stage admins")
    enforcement.drift_acknowledge(event=only_event(model), actor=admin, comment="keep it")

    assert enforcement.drift_revert(revert_id=reverts(model.name)[0].pk) == "skipped (acknowledged)"


# --- announcements ----------------------------------------------------------------------------


def test_drift_and_its_revert_are_posted_to_subscribed_endpoints(production_model, model_name):
    receiver = Receiver((200,))
    try:
        WebhookEndpoint.objects.create(
            name="ops",
            url=receiver.url,
            secret="s3cret-for-tests-only",
            events=["registry.drift", "registry.reverted"],
        )
        WebhookEndpoint.objects.create(
            name="requests only", url=receiver.url, secret="s3cret-for-tests-only", events=["request.created"]
        )
        enforce("Production")
        transition(production_model, model_name, 1, "Staging")
        sync(model_name)
        revert_all(model_name)
        for delivery in notifications.OutboundDelivery.objects.order_by("pk"):
            notifications.webhook_deliver(delivery_pk=delivery.pk)
    finally:
        receiver.close()

    payloads = [json.loads(body) for _, body in receiver.calls]
    assert [p["event"] for p in payloads] == ["registry.drift", "registry.reverted"]
    drift, reverted = payloads
    assert drift["model"]["name"] == model_name
    assert (drift["drift"]["version"], drift["drift"]["before"], drift["drift"]["after"]) == (
        1,
        "Production",
        "Staging",
    )
    assert reverted["revert"]["status"] == "reverted"
    assert reverted["revert"]["restored"] == [
        {"kind": "stage", "version": 1, "from": "Staging", "to": "Production"}
    ]


def test_drift_is_mailed_to_stage_admins_and_the_stages_approvers(
    production_model, model_name, mailoutbox, stage_admin, reviewer
):
    stage_admin.email, reviewer.email = "sam@example.com", "rex@example.com"
    stage_admin.save()
    reviewer.save()
    transition(production_model, model_name, 1, "Staging")
    sync(model_name)
    (email,) = notifications.OutboundEmail.objects.filter(kind="registry")

    notifications.email_send(email_pk=email.pk)

    assert sorted(m.to[0] for m in mailoutbox) == ["rex@example.com", "sam@example.com"]
    assert model_name in mailoutbox[0].subject and "Production to Staging" in mailoutbox[0].body


# --- the worker -------------------------------------------------------------------------------


def test_the_worker_reverts_what_the_sync_found_once_however_often_it_is_published(
    mlflow_proxy, registry, model_name, worker_factory
):
    client = registry.client()
    make_version(client, model_name)
    make_version(client, model_name)
    transition(client, model_name, 1, "Production")
    sync(model_name)
    enforce("Production")
    worker = worker_factory()
    transition(client, model_name, 1, "Staging")

    sync(model_name)  # commits: the revert is published then
    (revert,) = reverts(model_name)
    outbox.publish(enforcement.REVERT_TASK, [revert.pk])  # and once more, as a sweeper might

    wait_until(
        lambda: DriftRevert.objects.get(pk=revert.pk).status == Status.REVERTED,
        timeout=60,
        message=f"the revert\n{worker.log()[-3000:]}",
    )
    assert stages_of(client, model_name)[1] == "Production"
    time.sleep(2)  # the duplicate task has had its turn
    assert mlflow_proxy.writes(TRANSITION) == 1
    assert AuditEvent.objects.filter(action="registry.reverted", model_name=model_name).count() == 1
    assert sync(model_name).drift == 0


def test_the_worker_waits_for_an_apply_that_holds_the_lease(
    mlflow_proxy, registry, model_name, worker_factory, requester
):
    client = registry.client()
    make_version(client, model_name)
    make_version(client, model_name)
    transition(client, model_name, 1, "Production")
    sync(model_name)
    production = enforce("Production")
    model = RegisteredModel.objects.get(name=model_name)
    applying = request_of_ours(version(model, 2), production, requester, status="applying")
    PromotionRequest.objects.filter(pk=applying.pk).update(
        lease_token="live",
        lease_expires_at=timezone.now() + timedelta(seconds=8),
        updated_at=timezone.now() - timedelta(days=1),
    )
    worker = worker_factory()
    transition(client, model_name, 1, "Staging")

    sync(model_name)
    (revert,) = reverts(model_name)
    wait_until(
        lambda: "Waiting" in DriftRevert.objects.get(pk=revert.pk).last_error,
        timeout=30,
        message=f"the revert to wait\n{worker.log()[-3000:]}",
    )
    assert mlflow_proxy.writes(TRANSITION) == 0
    assert stages_of(client, model_name)[1] == "Staging"

    wait_until(
        lambda: DriftRevert.objects.get(pk=revert.pk).status == Status.REVERTED,
        timeout=60,
        message=f"the revert after the lease\n{worker.log()[-3000:]}",
    )
    assert timezone.now() >= PromotionRequest.objects.get(pk=applying.pk).lease_expires_at
    assert stages_of(client, model_name)[1] == "Production"
    assert mlflow_proxy.writes(TRANSITION) == 1


def test_acknowledging_without_the_csrf_token_is_refused(drifted, stage_admin):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(stage_admin)

    assert acknowledge(browser, drifted).status_code == 403

    assert not only_event(drifted).resolved
