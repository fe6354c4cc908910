"""The JSON API: bearer tokens, the same services and rules as the pages, JSON errors."""

import json
import uuid

import pytest
from django.test import Client

from promotions import services, tokens
from promotions.models import ApiToken, AuditEvent, PromotionRequest, Review
from registry_sync.models import RegisteredModel, SyncRun
from registry_sync.services import sync_registry
from tests.factories import mirror_model, stage, version
from tests.registry_helpers import make_version

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status


def api_client(user, name="tests") -> Client:
    _, raw = tokens.api_token_create(user=user, name=name)
    return Client(headers={"Authorization": f"Bearer {raw}"})


def post(client, path, body=None, raw=None):
    data = raw if raw is not None else json.dumps(body if body is not None else {})
    return client.post(path, data=data, content_type="application/json")


@pytest.fixture
def sales():
    return mirror_model(
        "sales_forecast",
        {
            3: {"current_stage": "Production", "metrics": {"accuracy": 0.91}},
            5: {"current_stage": "Staging", "metrics": {"accuracy": 0.93}},
            6: {"current_stage": "None", "metrics": {"accuracy": 0.94}},
        },
    )


@pytest.fixture
def pending(sales, requester):
    return services.promotion_request_create(
        version=version(sales, 5), stage=stage("Production"), requested_by=requester, justification="beats v3"
    )


# --- authentication ---------------------------------------------------------------------------


def test_an_anonymous_call_gets_a_json_401_not_a_login_redirect(client, pending):
    response = client.get(f"/api/requests/{pending.pk}")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert response.json()["code"] == "unauthenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header", ["Bearer prm_not-a-real-token", "Bearer ", "Basic cmlsZXk6cHctcmlsZXk=", "prm_abc"]
)
def test_a_bad_token_is_401(pending, header):
    response = Client(headers={"Authorization": header}).get("/api/requests")
    assert response.status_code == 401
    assert set(response.json()) >= {"code", "message"}


def test_a_revoked_token_stops_working_at_once(requester, pending):
    token, raw = tokens.api_token_create(user=requester, name="ci")
    client = Client(headers={"Authorization": f"Bearer {raw}"})
    assert client.get("/api/requests").status_code == 200
    tokens.api_token_revoke(token=token, user=requester)
    response = client.get("/api/requests")
    assert response.status_code == 401
    assert response.json() == {"code": "invalid_token", "message": "The token is unknown or revoked."}


def test_a_token_of_a_deactivated_user_is_refused(requester, pending):
    client = api_client(requester)
    requester.is_active = False
    requester.save()
    assert client.get("/api/requests").status_code == 401


def test_a_session_cookie_alone_does_not_authenticate_the_api(client, requester, pending):
    client.force_login(requester)
    assert client.get("/api/requests").status_code == 401
    # ...and so a forged cross-site POST riding on the session gets nowhere.
    assert post(client, f"/api/requests/{pending.pk}/cancel").status_code == 401
    pending.refresh_from_db()
    assert pending.status == Status.PENDING


def test_only_the_hash_is_stored_and_the_last_use_is_recorded(requester, pending):
    token, raw = tokens.api_token_create(user=requester, name="ci")
    assert raw not in (token.token_hash, token.prefix) and raw.startswith(token.prefix)
    assert token.last_used_at is None
    Client(headers={"Authorization": f"Bearer {raw}"}).get("/api/stages")
    token.refresh_from_db()
    assert token.last_used_at is not None


# --- roles and ids ----------------------------------------------------------------------------


def test_a_valid_token_without_a_role_gets_403_for_every_id_existing_or_not(outsider, pending):
    client = api_client(outsider)
    existing = client.get(f"/api/requests/{pending.pk}")
    missing = client.get("/api/requests/999999")
    assert existing.status_code == missing.status_code == 403
    assert existing.json() == missing.json()  # nothing tells the two apart
    assert b"beats v3" not in existing.content
    for action in ("approve", "cancel"):
        assert (
            post(client, f"/api/requests/{pending.pk}/{action}").json()
            == post(client, f"/api/requests/999999/{action}").json()
        )


def test_unknown_ids_are_404_for_users_with_a_role(reviewer):
    client = api_client(reviewer)
    assert client.get("/api/requests/999999").status_code == 404
    assert post(client, "/api/requests/999999/approve").json()["code"] == "not_found"
    assert client.get("/api/models/no_such_model").status_code == 404


@pytest.mark.parametrize("bad", ["abc", "0", "-1", str(2**80)])
def test_ids_that_are_not_positive_integers_are_422(reviewer, bad):
    response = api_client(reviewer).get(f"/api/requests/{bad}")
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][:2] == ["path", "request_id"]


# --- reading ----------------------------------------------------------------------------------


def test_it_lists_and_gets_requests(requester, pending):
    client = api_client(requester)
    page = client.get("/api/requests?status=pending&stage=production").json()
    assert page["count"] == 1
    item = page["items"][0]
    assert item["id"] == pending.pk and item["status"] == "pending"
    assert (item["model_name"], item["version"], item["stage"]) == ("sales_forecast", 5, "Production")
    assert (item["approvals"], item["required_approvals"]) == (0, 2)
    assert item["url"].endswith(f"/requests/{pending.pk}/")
    assert client.get(f"/api/requests/{pending.pk}").json() == item
    assert client.get("/api/requests?status=applied").json()["count"] == 0
    assert client.get("/api/requests?status=nonsense").status_code == 422


def test_it_lists_the_stage_catalog(requester):
    client = api_client(requester)
    stages = client.get("/api/stages").json()
    assert [s["name"] for s in stages] == ["Staging", "Production", "Archived"]
    production = client.get("/api/stages/production").json()
    assert production["allowed_from"] == ["Staging"] and production["required_approvals"] == 2
    unknown = client.get("/api/stages/Prodution")
    assert unknown.status_code == 404
    assert unknown.json()["message"] == (
        "Stage 'Prodution' is not in the stage catalog. Known stages: Staging, Production, Archived."
    )


def test_a_model_shows_its_versions_and_who_holds_each_stage(requester, sales):
    body = api_client(requester).get("/api/models/sales_forecast").json()
    assert [v["version"] for v in body["versions"]] == [6, 5, 3]
    assert body["stage_holders"] == {"Staging": [5], "Production": [3], "Archived": []}
    assert body["versions"][1]["stages"] == ["Staging"]
    assert body["versions"][0]["metrics"] == {"accuracy": 0.94}


def test_a_model_name_with_a_slash_is_found(requester):
    mirror_model("team/churn", {1: {"current_stage": "None"}})
    assert api_client(requester).get("/api/models/team/churn").json()["name"] == "team/churn"


# --- filing -----------------------------------------------------------------------------------


def test_it_files_a_request_and_answers_201(registry, model_name, requester):
    make_version(registry.client(), model_name, metrics={"accuracy": 0.9})
    response = post(
        api_client(requester),
        "/api/requests",
        {
            "model_name": model_name,
            "version": 1,
            "stage": "Staging",
            "justification": "nightly retrain",
            "evidence": {"ci_run": "https://ci.example/42", "tests_passed": True},
        },
    )
    assert response.status_code == 201, response.content
    body = response.json()
    request = PromotionRequest.objects.get(pk=body["id"])
    assert body["status"] == "pending"
    assert (request.via, request.requested_by) == ("api", requester)
    assert request.ci_evidence == {"ci_run": "https://ci.example/42", "tests_passed": True}
    assert AuditEvent.objects.get(action="request.created", request_id=request.pk).details["via"] == "api"


def test_an_unknown_stage_is_422_listing_the_catalog(registry, model_name, requester):
    make_version(registry.client(), model_name)
    body = {"model_name": model_name, "version": 1, "stage": "Prodution", "justification": "x"}
    response = post(api_client(requester), "/api/requests", body)
    assert response.status_code == 422
    known = "Known stages: Staging, Production, Archived."
    assert response.json() == {
        "code": "unknown_stage",
        "message": f"Stage 'Prodution' is not in the stage catalog. {known}",
    }


def test_an_unknown_version_is_422_naming_the_latest(registry, model_name, requester):
    make_version(registry.client(), model_name)
    body = {"model_name": model_name, "version": 7, "stage": "Staging", "justification": "x"}
    response = post(api_client(requester), "/api/requests", body)
    assert response.status_code == 422
    assert response.json()["code"] == "unknown_version"
    assert "(latest is v1)" in response.json()["message"]


def test_a_second_open_request_is_409(registry, model_name, requester):
    make_version(registry.client(), model_name)
    body = {"model_name": model_name, "version": 1, "stage": "Staging", "justification": "again"}
    client = api_client(requester)
    first = post(client, "/api/requests", body)
    response = post(client, "/api/requests", body)
    assert response.status_code == 409
    assert response.json() == {
        "code": "duplicate",
        "message": f"An open request for {model_name} v1 → Staging already exists (#{first.json()['id']}).",
        "request_id": first.json()["id"],
    }


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "malformed_json"),
        ('{"model_name": "m", "version": NaN}', "malformed_json"),
        ('{"model_name": "m", "version": 1e999}', "malformed_json"),
        ('{"model_name": "\\u0000"}', "malformed_json"),
        ('{"model_name": "\\ud800"}', "malformed_json"),
        ("[]", "invalid"),
        ('"a string"', "invalid"),
        ("", "invalid"),
    ],
)
def test_malformed_bodies_are_422_and_file_nothing(requester, raw, code):
    response = post(api_client(requester), "/api/requests", raw=raw)
    assert response.status_code == 422, response.content
    assert response.json()["code"] == code
    assert not PromotionRequest.objects.exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"version": "5"}, "version"),
        ({"version": 5.0}, "version"),
        ({"version": True}, "version"),
        ({"version": 0}, "version"),
        ({"model_name": 5}, "model_name"),
        ({"evidence": ["tests"]}, "evidence"),
        ({"justification": None}, "justification"),
        ({"stage": "x" * 65}, "stage"),
    ],
)
def test_wrong_types_are_422_with_the_field(requester, change, field):
    body = {"model_name": "sales_forecast", "version": 6, "stage": "Staging", "justification": "x", **change}
    response = post(api_client(requester), "/api/requests", body)
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert any(error["loc"][-1] == field or field in error["loc"] for error in errors), errors
    assert not PromotionRequest.objects.exists()


@pytest.mark.parametrize(
    "extra",
    [
        {"requested_by": 1},
        {"created_at": "2020-01-01T00:00:00Z"},
        {"expires_at": "2099-01-01T00:00:00Z"},
        {"status": "approved"},
    ],
)
def test_client_supplied_users_times_and_statuses_are_refused(requester, reviewer, sales, extra):
    body = {"model_name": "sales_forecast", "version": 6, "stage": "Staging", "justification": "x", **extra}
    response = post(api_client(requester), "/api/requests", body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "extra_forbidden"
    assert not PromotionRequest.objects.exists()


def test_a_user_without_the_requester_role_gets_403_and_it_is_audited(outsider, auditor, sales):
    body = {"model_name": "sales_forecast", "version": 6, "stage": "Staging", "justification": "x"}
    for user in (outsider, auditor):
        response = post(api_client(user), "/api/requests", body)
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"
    assert AuditEvent.objects.filter(action="auth.denied").count() == 2
    assert not PromotionRequest.objects.exists()


def test_huge_evidence_is_refused(requester, sales):
    body = {
        "model_name": "sales_forecast",
        "version": 6,
        "stage": "Staging",
        "justification": "x",
        "evidence": {"log": "x" * 70_000},
    }
    response = post(api_client(requester), "/api/requests", body)
    assert response.status_code == 422
    assert "evidence is larger than 64 KiB" in response.json()["message"]


def test_a_body_over_the_upload_limit_is_413(requester, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post(api_client(requester), "/api/requests", raw=json.dumps({"justification": "x" * 2000}))
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


# --- deciding ---------------------------------------------------------------------------------


def test_two_reviewers_approve_through_the_api(pending, reviewer, reviewer2):
    first = post(api_client(reviewer), f"/api/requests/{pending.pk}/approve", {"comment": "looks good"})
    assert first.status_code == 200
    assert (first.json()["status"], first.json()["approvals"]) == ("pending", 1)
    second = post(api_client(reviewer2), f"/api/requests/{pending.pk}/approve")  # no body at all
    assert second.json()["status"] == "approved"
    approval = AuditEvent.objects.filter(action="review.approved", request_id=pending.pk).last()
    assert approval.details["via"] == "api" and approval.details["comment"] == "looks good"


def test_the_requester_cannot_approve_their_own_request(pending, requester):
    requester.groups.add(*stage("Production").approver_groups.all())
    response = post(api_client(requester), f"/api/requests/{pending.pk}/approve")
    assert response.status_code == 403
    assert response.json()["message"] == "You cannot review your own request."
    assert not Review.objects.exists()
    assert AuditEvent.objects.filter(action="auth.denied", request_id=pending.pk).exists()


def test_a_role_without_approval_rights_gets_403(pending, auditor):
    response = post(api_client(auditor), f"/api/requests/{pending.pk}/approve")
    assert response.status_code == 403
    assert AuditEvent.objects.filter(action="auth.denied", actor_username="alice").exists()


def test_a_stale_evidence_digest_is_409_with_its_own_code(pending, reviewer):
    response = post(
        api_client(reviewer), f"/api/requests/{pending.pk}/approve", {"evidence_sha256": "0" * 64}
    )
    assert response.status_code == 409
    assert response.json()["code"] == "evidence_changed"
    pending.refresh_from_db()
    assert pending.status == "pending"
    assert not pending.reviews.exists()


def test_a_rejection_needs_a_comment_then_a_second_decision_is_409(pending, reviewer, reviewer2):
    client = api_client(reviewer)
    assert post(client, f"/api/requests/{pending.pk}/reject", {}).status_code == 422
    rejected = post(client, f"/api/requests/{pending.pk}/reject", {"comment": "needs a holdout eval"})
    assert rejected.json()["status"] == "rejected"
    assert rejected.json()["reviews"][0]["comment"] == "needs a holdout eval"
    late = post(api_client(reviewer2), f"/api/requests/{pending.pk}/approve")
    assert late.status_code == 409
    assert late.json() == {
        "code": "already_decided",
        "message": f"Request #{pending.pk} is already rejected.",
    }
    assert AuditEvent.objects.get(action="review.rejected").details["via"] == "api"


def test_the_requester_cancels_and_others_may_not(pending, requester, reviewer):
    assert post(api_client(reviewer), f"/api/requests/{pending.pk}/cancel").status_code == 403
    response = post(api_client(requester), f"/api/requests/{pending.pk}/cancel")
    assert response.json()["status"] == "cancelled"
    details = AuditEvent.objects.get(action="request.cancelled").details
    token = ApiToken.objects.get(pk=details["api_token"]["id"])  # the token it acted through
    assert (token.user, token.name) == (requester, "tests")
    assert details == {"via": "api", "api_token": {"id": token.pk, "name": "tests", "prefix": token.prefix}}
    assert post(api_client(requester), f"/api/requests/{pending.pk}/cancel").status_code == 409


def test_decision_bodies_refuse_unknown_fields(pending, reviewer):
    response = post(api_client(reviewer), f"/api/requests/{pending.pk}/approve", {"reviewer": 1})
    assert response.status_code == 422
    assert not Review.objects.exists()


# --- audit ------------------------------------------------------------------------------------


def test_auditors_page_through_the_log_by_sequence(auditor, pending):
    client = api_client(auditor)
    first = client.get("/api/audit?limit=2").json()
    assert [e["sequence"] for e in first["items"]] == [1, 2]
    second = client.get(f"/api/audit?after={first['next_after']}&limit=1000")
    assert second.status_code == 422  # limit is at most 500
    rest = client.get(f"/api/audit?after={first['next_after']}&limit=500").json()
    assert rest["items"][0]["sequence"] == 3 and rest["next_after"] is None
    created = client.get(f"/api/audit?action=request.created&request_id={pending.pk}").json()["items"]
    assert [e["meaning"] for e in created] == ["Requested: promote sales_forecast v5 to Production"]
    assert len(created[0]["hash"]) == 64


def test_others_may_not_read_the_audit_log_and_it_is_audited(reviewer):
    response = api_client(reviewer).get("/api/audit")
    assert response.status_code == 403
    assert AuditEvent.objects.filter(action="auth.denied", actor_username="rex").count() == 1


# --- schema and docs --------------------------------------------------------------------------


def test_the_schema_is_public_and_documents_bearer_auth(client):
    schema = client.get("/api/openapi.json").json()
    assert schema["components"]["securitySchemes"]["BearerToken"] == {"type": "http", "scheme": "bearer"}
    assert "/api/requests/bulk" in schema["paths"]
    assert schema["components"]["schemas"]["RequestIn"]["additionalProperties"] is False


def test_the_docs_page_loads_everything_from_this_site_under_the_strict_csp(client):
    response = client.get("/api/docs")
    assert response.status_code == 200
    page = response.content.decode()
    assert "cdn." not in page and "https://" not in page
    assert "/static/ninja/swagger-ui-bundle.js" in page
    assert "<script>" not in page  # only src= scripts and a JSON data block
    csp = response["Content-Security-Policy"]
    script = next(part for part in csp.split(";") if part.strip().startswith("script-src"))
    assert script.strip() == "script-src 'self'"
    assert client.get("/static/ninja/swagger-ui-bundle.js").status_code == 200


def test_an_unknown_api_url_is_a_json_404_and_other_pages_keep_theirs(client, requester):
    for path in ("/api/nowhere", "/api/stages/%0A"):
        response = api_client(requester).get(path)
        assert response.status_code == 404
        assert response.json() == {"code": "not_found", "message": "No such API endpoint."}
    client.force_login(requester)
    page = client.get("/no-such-page/")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")


# --- every operation, walked as anonymous, as a user without the role and as the right role ---


def operations():
    from promotions.api import api

    schema = api.get_openapi_schema()
    return sorted((method.upper(), path) for path, item in schema["paths"].items() for method in item)


WHO = {  # operation → (who may, status for them)
    ("GET", "/api/stages"): ("requester", 200),
    ("GET", "/api/stages/{name}"): ("requester", 200),
    ("GET", "/api/requests"): ("requester", 200),
    ("POST", "/api/requests"): ("requester", 201),
    ("POST", "/api/requests/bulk"): ("requester", 200),
    ("GET", "/api/requests/{request_id}"): ("auditor", 200),
    ("POST", "/api/requests/{request_id}/approve"): ("reviewer", 200),
    ("POST", "/api/requests/{request_id}/reject"): ("reviewer", 200),
    ("POST", "/api/requests/{request_id}/cancel"): ("requester", 200),
    ("POST", "/api/requests/{request_id}/emergency"): ("stage_admin", 200),
    # The walked request was no emergency change: the reviewer gets as far as being told so.
    ("POST", "/api/requests/{request_id}/retrospective-review"): ("reviewer", 422),
    ("GET", "/api/models/{name}"): ("auditor", 200),
    ("GET", "/api/audit"): ("auditor", 200),
    ("GET", "/api/models/{name}/history"): ("requester", 200),
    ("GET", "/api/holders"): ("reviewer", 200),
}
BODIES = {
    "/api/requests": {"model_name": "{model}", "version": 2, "stage": "Staging", "justification": "x"},
    "/api/requests/bulk": {"stage": "Staging", "justification": "x", "models": ["{model}"]},
    "/api/requests/{request_id}/reject": {"comment": "no"},
    "/api/requests/{request_id}/emergency": {"reason": "outage"},
    "/api/requests/{request_id}/retrospective-review": {"comment": "fine"},
}

QUERIES = {"/api/holders": "?at=2026-03-01T09:00:00Z&stage=Production"}


def test_every_operation_is_in_the_table():
    assert set(operations()) == set(WHO)


@pytest.fixture(scope="module")
def walked_in_mlflow(mlflow_server):
    """Registered once: filing asks MLflow, and MLflow takes a second per new version."""
    name = f"walked_{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        make_version(mlflow_server.client(), name)
    return name


@pytest.fixture
def walked(registry, walked_in_mlflow, requester, reviewer, auditor, outsider, stage_admin):
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=walked_in_mlflow)
    model = RegisteredModel.objects.get(name=walked_in_mlflow)
    request = services.promotion_request_create(
        version=version(model, 1), stage=stage("Staging"), requested_by=requester, justification="walk"
    )
    people = {
        "requester": requester,
        "reviewer": reviewer,
        "auditor": auditor,
        "outsider": outsider,
        "stage_admin": stage_admin,
    }
    return request, people


def call(client, method, path, request):
    model = request.version.model.name
    url = path.format(request_id=request.pk, name=model if "models" in path else "Staging")
    if method == "GET":
        return client.get(url + QUERIES.get(path, ""))
    body = json.loads(json.dumps(BODIES.get(path, {})).replace("{model}", model))
    return post(client, url, body)


@pytest.mark.parametrize(("method", "path"), sorted(WHO))
def test_anonymous_calls_get_a_json_401(client, walked, method, path):
    response = call(client, method, path, walked[0])
    assert response.status_code == 401 and response.json()["code"] == "unauthenticated"


@pytest.mark.parametrize(("method", "path"), sorted(WHO))
def test_a_user_without_the_role_gets_403_and_no_data(walked, method, path):
    request, people = walked
    response = call(api_client(people["outsider"]), method, path, request)
    assert response.status_code == 403
    assert b"walk" not in response.content
    request.refresh_from_db()
    assert request.status == Status.PENDING and not Review.objects.exists()


@pytest.mark.parametrize(("method", "path"), sorted(WHO))
def test_the_right_role_gets_through(walked, method, path):
    request, people = walked
    who, status = WHO[(method, path)]
    response = call(api_client(people[who]), method, path, request)
    assert response.status_code == status, response.content[:500]


def test_the_request_list_costs_a_fixed_number_of_queries(requester, reviewer, django_assert_max_num_queries):
    model = mirror_model("many", {n: {"current_stage": "None"} for n in range(1, 21)})
    for number in range(1, 21):
        request = services.promotion_request_create(
            version=version(model, number), stage=stage("Staging"), requested_by=requester, justification="x"
        )
        services.review_reject(request=request, reviewer=reviewer, comment="no")
    client = api_client(requester)
    with django_assert_max_num_queries(8):
        body = client.get("/api/requests?limit=20").json()
    assert len(body["items"]) == 20 and all(len(item["reviews"]) == 1 for item in body["items"])


def test_the_token_is_named_only_in_the_entries_of_its_own_request(pending, requester, client):
    """The web request after an API request on the same thread records no token."""
    assert post(api_client(requester, name="nightly CI"), "/api/requests", {}).status_code == 422
    client.force_login(requester)
    assert client.post(f"/requests/{pending.pk}/cancel/").status_code in (200, 302)
    cancelled = AuditEvent.objects.get(action="request.cancelled", request_id=pending.pk)
    assert "api_token" not in cancelled.details and cancelled.details["via"] == "web"
