"""The request pages: file, view, approve, reject, cancel — with and without htmx."""

import pytest

from promotions import services
from promotions.models import AuditEvent, PromotionRequest, Review
from registry_sync.models import RegisteredModel, SyncRun
from registry_sync.services import sync_registry
from tests.factories import mirror_model, stage, version
from tests.registry_helpers import make_version
from tests.registry_helpers import stage as move

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status


@pytest.fixture
def sales():
    return mirror_model(
        "sales_forecast",
        {
            3: {
                "current_stage": "Production",
                "metrics": {"accuracy": 0.91, "rmse": 13.9},
                "params": {"depth": "8"},
            },
            5: {
                "current_stage": "Staging",
                "metrics": {"accuracy": 0.931, "rmse": 12.4},
                "params": {"depth": "10"},
            },
            6: {"current_stage": "None"},
        },
    )


@pytest.fixture
def pending(sales, requester):
    return services.promotion_request_create(
        version=version(sales, 5),
        stage=stage("Production"),
        requested_by=requester,
        justification="Q3 retrain",
    )


def test_the_form_narrows_versions_and_stages(client, requester, sales):
    client.force_login(requester)
    body = client.get("/requests/new/?model=sales_forecast&version=5").content.decode()
    assert 'for="id_model">Model<' in body and "Target stage" in body and "Justification" in body
    assert "v5 — Staging" in body
    # from Staging the catalog allows Production and Archived, not Staging again
    assert '<option value="Production"' in body
    assert '<option value="Staging"' not in body


def test_the_form_previews_the_checks(client, requester, sales):
    production = stage("Production")
    production.checks = "metric accuracy >= 0.95"
    production.save()
    client.force_login(requester)
    body = client.get("/requests/new/?model=sales_forecast&version=5&stage=Production").content.decode()
    assert "✗ metric accuracy &gt;= 0.95" in body


@pytest.fixture
def registered(registry, model_name):
    """v1 in Staging and v2 in no stage, in MLflow and (synced) in the mirror: filing from the
    page asks MLflow first."""
    client = registry.client()
    make_version(client, model_name, metrics={"accuracy": 0.9})
    make_version(client, model_name, metrics={"accuracy": 0.95})
    move(client, model_name, 1, "Staging")
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    return model_name


def test_a_requester_files_a_request(client, requester, registered):
    client.force_login(requester)
    response = client.post(
        "/requests/new/",
        {"model": registered, "version": "1", "stage": "Production", "justification": "Q3 retrain"},
    )
    request = PromotionRequest.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/requests/{request.pk}/"
    assert (request.status, request.requested_by, request.via) == (Status.PENDING, requester, "web")


def test_the_form_shows_errors_next_to_the_field(client, requester, sales):
    client.force_login(requester)
    response = client.post(
        "/requests/new/", {"model": "sales_forecast", "version": "5", "stage": "Production"}
    )
    assert response.status_code == 422
    assert "A justification is required" in response.content.decode()
    assert not PromotionRequest.objects.exists()


def test_a_duplicate_request_is_refused_in_the_form(client, requester, registered):
    pending = services.promotion_request_file(
        model_name=registered, version=1, stage_name="Production", requested_by=requester, justification="1st"
    )
    client.force_login(requester)
    response = client.post(
        "/requests/new/",
        {"model": registered, "version": "1", "stage": "Production", "justification": "again"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 422
    assert f"already exists (#{pending.pk})" in response.content.decode()
    assert PromotionRequest.objects.count() == 1


def test_the_request_page_compares_with_the_current_holder(client, reviewer, pending):
    client.force_login(reviewer)
    body = client.get(f"/requests/{pending.pk}/").content.decode()
    assert "Compared with the version in Production now (v3)" in body
    assert "+0.021 ▲ better" in body
    assert "−1.5 ▲ better" in body  # lower rmse is better
    assert "depth 8 → 10" in body
    assert 'name="decision" value="approve"' in body
    assert "Pending" in body


def test_the_requester_sees_cancel_but_never_approve(client, requester, pending):
    client.force_login(requester)
    body = client.get(f"/requests/{pending.pk}/").content.decode()
    assert "Cancel request" in body
    assert 'value="approve"' not in body


def test_a_forged_self_approval_is_refused_and_audited(client, requester, pending):
    from django.contrib.auth.models import Group

    requester.groups.add(Group.objects.get(name="Reviewers"))
    client.force_login(requester)
    response = client.post(f"/requests/{pending.pk}/decide/", {"decision": "approve", "comment": "me"})
    assert response.status_code == 403
    assert not Review.objects.exists()
    assert AuditEvent.objects.filter(action="auth.denied", request_id=pending.pk).count() == 1


def test_a_reviewer_approves_in_place_with_htmx(client, reviewer, pending):
    client.force_login(reviewer)
    response = client.post(
        f"/requests/{pending.pk}/decide/",
        {"decision": "approve", "comment": "fine", "evidence_sha256": pending.evidence_sha256},
        HTTP_HX_REQUEST="true",
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in body and 'id="request-panel"' in body
    assert "Decision (1 of 2 approvals)" in body
    assert "rex approved" in body.lower() or "Rex Tester approved" in body


def test_a_rejection_without_comment_shows_the_error(client, reviewer, pending):
    client.force_login(reviewer)
    response = client.post(f"/requests/{pending.pk}/decide/", {"decision": "reject"}, HTTP_HX_REQUEST="true")
    assert "A rejection needs a comment" in response.content.decode()
    pending.refresh_from_db()
    assert pending.status == Status.PENDING


def test_a_decided_request_says_already_decided(client, reviewer, reviewer2, pending):
    services.review_reject(request=pending, reviewer=reviewer2, comment="no")
    client.force_login(reviewer)
    response = client.post(f"/requests/{pending.pk}/decide/", {"decision": "approve"}, HTTP_HX_REQUEST="true")
    assert "already rejected" in response.content.decode()


def test_the_requester_cancels(client, requester, pending):
    client.force_login(requester)
    response = client.post(f"/requests/{pending.pk}/cancel/")
    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.status == Status.CANCELLED


def test_another_requester_cannot_cancel(client, pending):
    from tests.conftest import make_user

    other = make_user("ronja", "Requesters")
    client.force_login(other)
    assert client.post(f"/requests/{pending.pk}/cancel/").status_code == 403


def test_text_is_escaped_everywhere(client, requester, reviewer, sales):
    request = services.promotion_request_create(
        version=version(sales, 5),
        stage=stage("Production"),
        requested_by=requester,
        justification="<script>alert('j')</script>" + "x" * 9000,
    )
    services.review_approve(request=request, reviewer=reviewer, comment="<img src=x onerror=alert(1)>")
    client.force_login(reviewer)
    body = client.get(f"/requests/{request.pk}/").content.decode()
    assert "<script>alert('j')</script>" not in body and "&lt;script&gt;" in body
    assert "<img src=x" not in body


def test_the_queue_lists_what_waits_for_the_reviewer(client, reviewer, pending):
    client.force_login(reviewer)
    body = client.get("/").content.decode()
    assert "sales_forecast" in body and "0/2" in body and "Staging → Production" in body
    assert 'id="queue-badge"' in body


def bulk_approval(queue_page, requests, *, comment: str) -> dict:
    """The bulk form as the queue page filled it: the ticked requests and the digests it showed."""
    body = queue_page.content.decode()
    data = {"decision": "approve", "comment": comment, "request_ids": [r.pk for r in requests]}
    for r in requests:
        field = f'name="evidence_{r.pk}" value="'
        assert field in body
        data[f"evidence_{r.pk}"] = body.split(field, 1)[1].split('"', 1)[0]
    return data


def test_bulk_approve_records_one_decision_each(client, requester, reviewer, sales):
    first = services.promotion_request_create(
        version=version(sales, 5), stage=stage("Production"), requested_by=requester, justification="a"
    )
    second = services.promotion_request_create(
        version=version(sales, 6), stage=stage("Staging"), requested_by=requester, justification="b"
    )
    client.force_login(reviewer)
    client.post("/queue/bulk/", bulk_approval(client.get("/"), [first, second], comment="batch"))
    assert Review.objects.filter(comment="batch").count() == 2
    assert AuditEvent.objects.filter(action="review.approved").count() == 2
    second.refresh_from_db()
    assert second.status == Status.APPROVED


def test_bulk_approve_refuses_a_request_whose_evidence_changed_since_the_page_was_shown(
    client, requester, reviewer, sales
):
    first = services.promotion_request_create(
        version=version(sales, 5), stage=stage("Production"), requested_by=requester, justification="a"
    )
    other = mirror_model(versions={1: {"current_stage": "None"}})
    second = services.promotion_request_create(
        version=version(other, 1), stage=stage("Staging"), requested_by=requester, justification="b"
    )
    client.force_login(reviewer)
    form = bulk_approval(client.get("/"), [first, second], comment="batch")
    # while the reviewer reads the queue, a sync brings new metrics for v5
    changed = version(sales, 5)
    changed.metrics = {"accuracy": 0.5, "rmse": 30.0}
    changed.save()
    assert services.requests_refresh_evidence(version_ids={changed.pk}) == 1

    response = client.post("/queue/bulk/", form, follow=True)

    body = response.content.decode()
    assert f"#{first.pk}: The evidence changed since you loaded the page" in body
    assert not Review.objects.filter(request=first).exists()
    assert Review.objects.filter(request=second, comment="batch").count() == 1


def test_bulk_approve_refuses_a_request_sent_without_the_digest_it_showed(
    client, requester, reviewer, pending
):
    client.force_login(reviewer)
    client.post("/queue/bulk/", {"decision": "approve", "request_ids": [pending.pk]})
    assert not Review.objects.filter(request=pending).exists()


def test_a_decision_updates_the_queue_badge_out_of_band(client, reviewer, pending):
    client.force_login(reviewer)
    response = client.post(f"/requests/{pending.pk}/decide/", {"decision": "approve"}, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert 'id="queue-badge" class="badge" hx-swap-oob="true"' in body
    assert body.split('hx-swap-oob="true"', 1)[1].split("</span>", 1)[0].strip().endswith("0")


def test_the_model_page_offers_a_rollback_to_the_previous_holder(client, requester, registry, model_name):
    from django.utils import timezone

    # v1 held Production before v2 took it; both promotions went through the product.
    mlflow = registry.client()
    for _ in range(2):
        make_version(mlflow, model_name, metrics={"accuracy": 0.9})
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    model = RegisteredModel.objects.get(name=model_name)
    now = timezone.now()
    for number in (1, 2):
        request = services.promotion_request_create(
            version=version(model, number),
            stage=stage("Staging"),
            requested_by=requester,
            justification="history",
        )
        PromotionRequest.objects.filter(pk=request.pk).update(
            stage=stage("Production"),
            status=Status.APPLIED,
            applied_at=now - timezone.timedelta(days=10 - number),
        )
    move(mlflow, model_name, 1, "Archived")
    move(mlflow, model_name, 2, "Production")
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    client.force_login(requester)

    body = client.get(f"/models/{model_name}/").content.decode()
    assert "Roll back to v1" in body
    form = client.get(
        f"/requests/new/?model={model_name}&version=1&stage=Production&rollback=1"
    ).content.decode()
    assert '<option value="Production" selected>' in form, form[form.index("id_stage") :][:600]
    response = client.post(
        "/requests/new/",
        {
            "model": model_name,
            "version": "1",
            "stage": "Production",
            "justification": "v2 regressed",
            "rollback": "1",
        },
    )
    assert response.status_code == 302, response.content.decode()[:1500]
    rollback = PromotionRequest.objects.get(status=Status.PENDING)
    assert rollback.evidence["rollback"] is True and rollback.version.version == 1
    assert rollback.stage.required_approvals == 2  # the same approval policy


def test_a_forged_rollback_flag_is_refused_and_audited(client, requester, registry, model_name):
    """v1 never held Production: rollback=1 must not skip the catalog's allowed-from rule."""
    from promotions.models import AuditEvent

    make_version(registry.client(), model_name, metrics={"accuracy": 0.9})
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    client.force_login(requester)
    response = client.post(
        "/requests/new/",
        {
            "model": model_name,
            "version": "1",
            "stage": "Production",
            "justification": "not really a rollback",
            "rollback": "1",
        },
    )
    assert response.status_code == 422
    assert "never held Production" in response.content.decode()
    assert not PromotionRequest.objects.exists()
    denied = AuditEvent.objects.get(action="auth.denied")
    assert denied.details["reason"] == "the version never held the stage"
    assert (denied.model_name, denied.version, denied.to_stage) == (model_name, 1, "Production")


def test_a_version_the_audit_log_shows_in_the_stage_may_be_rolled_back(client, requester, sales):
    """The record may be the audit log alone: v6 was the previous holder of an applied promotion."""
    from promotions import audit, catalog

    audit.record(
        action="promotion.applied",
        meaning="Applied: promote sales_forecast v4 to Production",
        model_name="sales_forecast",
        version=4,
        to_stage="Production",
        details={"previous_holders": [6]},
    )
    assert catalog.held_before(version=version(sales, 6), stage=stage("Production"))
    assert not catalog.held_before(version=version(sales, 5), stage=stage("Production"))
    assert not catalog.held_before(version=version(sales, 6), stage=stage("Staging"))
