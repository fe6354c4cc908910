"""Stage history: who held each stage and alias of a model when, and which version of every
model held a stage at a time. The API, the page, the auditors' CSV and their query counts."""

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from promotions import audit, tokens
from promotions.models import AuditEvent, PromotionRequest, Review, Stage
from registry_sync.models import DriftEvent, ModelVersion
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def api_client(user) -> Client:
    _, raw = tokens.api_token_create(user=user, name="tests")
    return Client(headers={"Authorization": f"Bearer {raw}"})


def applied(model, number, stage_name, *, when, archived=(), previous=(), requester="Riley", record=True):
    """An applied request as the worker leaves it: the row and its `promotion.applied` entry."""
    target = stage(stage_name)
    request = PromotionRequest.objects.create(
        version=version(model, number),
        stage=target,
        requested_by_name=requester,
        justification="history",
        status=PromotionRequest.Status.APPLIED,
        evidence={},
        evidence_sha256="0" * 64,
        created_at=when,
        updated_at=when,
        expires_at=when + timedelta(days=7),
        decided_at=when,
        applied_at=when,
    )
    if record:
        audit.record(
            action="promotion.applied",
            meaning=f"Applied: promote {model.name} v{number} to {target.name}",
            model_name=model.name,
            version=number,
            to_stage=target.name,
            request_id=request.pk,
            details={
                "previous_holders": list(previous),
                "archived": list(archived),
                "approved_by": ["Rex", "Rita"],
                "binding": target.binding_label,
            },
        )
    return request


def drift(model, number, *, when, kind="stage", alias="", before="", after=""):
    return DriftEvent.objects.create(
        model=model, version=number, kind=kind, alias=alias, before=before, after=after, detected_at=when
    )


def reverted(model, number, *, when, before, after):
    """A `registry.reverted` entry at `when`, in the shape the drift enforcement records it
    (`services.enforcement._details`): version `number` put back from `before` to `after`.
    Written as the log holds it (the service would stamp the time of the test)."""
    return AuditEvent.objects.create(
        sequence=10**9,
        created_at=when,
        actor_name="system",
        action="registry.reverted",
        model_name=model.name,
        version=number,
        meaning=f"Reverted: {model.name} v{number} back to {after}",
        details={
            "outcome": "reverted",
            "change": {"kind": "stage", "alias": "", "before": after, "after": before},
            "restored": [{"kind": "stage", "version": number, "from": before, "to": after}],
        },
        prev_hash="0" * 64,
        hash="0" * 64,
    )


@pytest.fixture
def champion():
    return Stage.objects.create(name="Champion", position=40, mlflow_alias="champion", required_approvals=1)


@pytest.fixture
def sales(champion):
    """v1 to Staging, then Production; v2 takes Production (v1 archived); @champion set in
    MLflow by hand; v2 moved to Staging by hand, and put back by the enforcement."""
    model = mirror_model("sales_forecast", {1: {}, 2: {}})
    records = {
        "staging": applied(model, 1, "Staging", when=at(1)),
        "production": applied(model, 1, "Production", when=at(2)),
        "takeover": applied(model, 2, "Production", when=at(3), archived=[1], previous=[1]),
        "alias": drift(model, 2, when=at(4), kind="alias", alias="champion", before="", after="2"),
        "moved": drift(model, 2, when=at(5), before="Production", after="Staging"),
        "revert": reverted(model, 2, when=at(6), before="Staging", after="Production"),
    }
    return model, records


def rows(items):
    return [
        (i["stage"], i["version"], i["from"], i["until"], i["via"], i["request_id"] or i["drift_event_id"])
        for i in items
    ]


# --- GET /api/models/{name}/history ----------------------------------------------------------


def test_the_history_names_every_holder_change_and_how_it_came(reviewer, sales):
    model, r = sales
    body = api_client(reviewer).get("/api/models/sales_forecast/history").json()
    assert body["model_name"] == "sales_forecast"
    assert rows(body["items"]) == [
        ("Staging", 1, iso(at(1)), iso(at(2)), "request", r["staging"].pk),
        ("Staging", 2, iso(at(5)), iso(at(6)), "outside", r["moved"].pk),
        ("Production", 1, iso(at(2)), iso(at(3)), "request", r["production"].pk),
        ("Production", 2, iso(at(3)), iso(at(5)), "request", r["takeover"].pk),
        ("Production", 2, iso(at(6)), None, "revert", None),
        ("Archived", 1, iso(at(3)), None, "request", r["takeover"].pk),
        ("Champion", 2, iso(at(4)), None, "outside", r["alias"].pk),
    ]
    assert body["count"] == 7
    first = body["items"][0]
    assert first["binding"] == "stage Staging"
    assert (first["requested_by"], first["approved_by"]) == ("Riley", ["Rex", "Rita"])
    assert body["items"][4]["audit_sequence"] == r["revert"].sequence
    assert body["items"][-1]["binding"] == "alias @champion"


def test_a_request_without_its_audit_entry_takes_the_approvers_from_its_reviews(reviewer, champion):
    model = mirror_model("churn", {1: {}})
    request = applied(model, 1, "Champion", when=at(1), record=False)
    Review.objects.create(
        request=request, reviewer_name="Rex", decision="approve", evidence_sha256="0" * 64, created_at=at(1)
    )
    item = api_client(reviewer).get("/api/models/churn/history").json()["items"][0]
    assert (item["stage"], item["version"], item["approved_by"]) == ("Champion", 1, ["Rex"])


def test_a_holder_displaced_before_the_record_began_has_no_start(reviewer):
    model = mirror_model("churn", {1: {}, 2: {}})
    applied(model, 2, "Production", when=at(1), archived=[1], previous=[1])
    items = api_client(reviewer).get("/api/models/churn/history").json()["items"]
    assert [(i["stage"], i["version"], i["from"], i["until"], i["via"]) for i in items][:2] == [
        ("Production", 1, None, iso(at(1)), "before_record"),
        ("Production", 2, iso(at(1)), None, "request"),
    ]


def test_the_history_of_a_model_whose_name_has_a_slash(reviewer):
    model = mirror_model("team/forecast", {1: {}})
    applied(model, 1, "Staging", when=at(1))
    response = api_client(reviewer).get("/api/models/team/forecast/history")
    assert response.status_code == 200
    assert response.json()["model_name"] == "team/forecast"
    # ...and the model itself is still reached at its own URL.
    assert api_client(reviewer).get("/api/models/team/forecast").json()["name"] == "team/forecast"


def test_the_history_pages_with_limit_and_offset(reviewer, sales):
    body = api_client(reviewer).get("/api/models/sales_forecast/history?limit=2&offset=1").json()
    assert body["count"] == 7
    assert [(i["stage"], i["version"]) for i in body["items"]] == [("Staging", 2), ("Production", 1)]


def test_an_unknown_model_is_404_like_every_other_api_404(reviewer):
    response = api_client(reviewer).get("/api/models/no_such_model/history")
    assert response.status_code == 404
    assert response.json() == {
        "code": "not_found",
        "message": "No model named 'no_such_model' in the registry mirror.",
    }


def test_the_history_needs_a_token_and_a_role(client, outsider, sales):
    anonymous = client.get("/api/models/sales_forecast/history")
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "unauthenticated"
    refused = api_client(outsider).get("/api/models/sales_forecast/history")
    assert refused.status_code == 403
    assert api_client(outsider).get("/api/models/no_such_model/history").json() == refused.json()


# --- GET /api/holders ------------------------------------------------------------------------


@pytest.fixture
def two_models(sales):
    model, records = sales
    other = mirror_model("churn", {1: {}, 2: {}})
    first = applied(other, 1, "Production", when=at(2.5))
    return records, first


@pytest.mark.parametrize(
    "moment, expected",
    [
        (at(0.5), []),
        (at(2.5), [("churn", 1, "first"), ("sales_forecast", 1, "production")]),
        (at(3), [("churn", 1, "first"), ("sales_forecast", 2, "takeover")]),
        (at(5.5), [("churn", 1, "first")]),  # v2 was moved to Staging outside the workflow
    ],
)
def test_which_version_of_every_model_held_a_stage_at_a_time(reviewer, two_models, moment, expected):
    records, first = two_models
    ids = {**{name: row.pk for name, row in records.items()}, "first": first.pk}
    body = api_client(reviewer).get("/api/holders", {"at": iso(moment), "stage": "production"}).json()
    assert (body["stage"], body["at"], body["count"]) == ("Production", iso(moment), len(expected))
    assert [(i["model_name"], i["version"], i["request_id"]) for i in body["items"]] == [
        (name, number, ids[key]) for name, number, key in expected
    ]


def test_a_holder_put_there_outside_the_workflow_names_its_drift_event(reviewer, sales):
    _, records = sales
    items = (
        api_client(reviewer).get("/api/holders", {"at": iso(at(4.5)), "stage": "Champion"}).json()["items"]
    )
    assert [
        (i["model_name"], i["version"], i["via"], i["drift_event_id"], i["request_id"]) for i in items
    ] == [("sales_forecast", 2, "outside", records["alias"].pk, None)]
    assert items[0]["since"] == iso(at(4)) and items[0]["binding"] == "alias @champion"


def test_an_offset_in_at_is_read_as_that_offset(reviewer, sales):
    body = (
        api_client(reviewer)
        .get("/api/holders", {"at": "2026-03-01T13:30:00+02:00", "stage": "Production"})
        .json()
    )
    assert body["at"] == iso(at(2.5))
    assert [i["version"] for i in body["items"]] == [1]


def test_holders_page_with_limit_and_offset(reviewer, two_models):
    client = api_client(reviewer)
    body = client.get(
        "/api/holders", {"at": iso(at(3)), "stage": "Production", "limit": 1, "offset": 1}
    ).json()
    assert body["count"] == 2
    assert [i["model_name"] for i in body["items"]] == ["sales_forecast"]


@pytest.mark.parametrize(
    "query, words",
    [
        ({"at": "2026-03-01T09:00:00", "stage": "Production"}, "has no timezone"),
        ({"at": "2026-03-01", "stage": "Production"}, "has no timezone"),
        ({"at": "yesterday", "stage": "Production"}, "is not an ISO 8601 time"),
        ({"at": "2026-13-01T00:00:00Z", "stage": "Production"}, "is not an ISO 8601 time"),
    ],
)
def test_a_bad_time_is_422_saying_why(reviewer, query, words):
    response = api_client(reviewer).get("/api/holders", query)
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid"
    assert words in body["message"]
    assert body["errors"][0]["loc"] == ["query", "at"]


def test_an_unknown_stage_is_422_listing_the_catalog(reviewer):
    response = api_client(reviewer).get("/api/holders", {"at": iso(at(1)), "stage": "Prodution"})
    assert response.status_code == 422
    assert response.json() == {
        "code": "unknown_stage",
        "message": "Stage 'Prodution' is not in the stage catalog. "
        "Known stages: Staging, Production, Archived.",
    }


def test_holders_need_both_parameters_and_no_others(reviewer):
    client = api_client(reviewer)
    assert client.get("/api/holders", {"stage": "Production"}).status_code == 422
    assert client.get("/api/holders", {"at": iso(at(1))}).status_code == 422
    unknown = client.get("/api/holders", {"at": iso(at(1)), "stage": "Production", "model": "x"})
    assert unknown.status_code == 422


def test_holders_need_a_token_and_a_role(client, outsider):
    query = {"at": iso(at(1)), "stage": "Production"}
    assert client.get("/api/holders", query).status_code == 401
    assert api_client(outsider).get("/api/holders", query).status_code == 403


# --- the page --------------------------------------------------------------------------------


def test_the_page_shows_a_timeline_of_each_stage_and_alias(client, requester, sales):
    _, records = sales
    client.force_login(requester)
    response = client.get("/models/sales_forecast/history/")
    assert response.status_code == 200
    body = response.content.decode()
    for heading in ("Staging", "Production", "Archived", "Champion"):
        assert f"{heading} <span" in body
    assert "alias @champion" in body
    assert f'href="/requests/{records["takeover"].pk}/"' in body
    assert f"outside the workflow (drift #{records['alias'].pk})" in body
    assert f'href="/models/sales_forecast/#drift-{records["alias"].pk}"' in body
    assert f"drift reverted (audit #{records['revert'].sequence})" in body
    assert "Rex, Rita" in body and "Riley" in body
    assert "holds it" in body
    assert "Export holders" not in body  # auditors only


def test_the_model_page_links_to_its_history(client, requester, sales):
    client.force_login(requester)
    body = client.get("/models/sales_forecast/").content.decode()
    assert 'href="/models/sales_forecast/history/"' in body


def test_every_role_sees_the_page_and_nobody_else(
    client, requester, reviewer, stage_admin, auditor, outsider, sales
):
    for user in (requester, reviewer, stage_admin, auditor):
        client.force_login(user)
        assert client.get("/models/sales_forecast/history/").status_code == 200
    client.force_login(outsider)
    assert client.get("/models/sales_forecast/history/").status_code == 403
    client.logout()
    response = client.get("/models/sales_forecast/history/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_page_of_an_unknown_model_is_404(client, requester):
    client.force_login(requester)
    assert client.get("/models/nope/history/").status_code == 404


def test_an_auditor_is_offered_the_holders_export(client, auditor, sales):
    client.force_login(auditor)
    body = client.get("/models/sales_forecast/history/").content.decode()
    assert 'action="/audit/holders.csv"' in body


# --- the auditors' CSV -----------------------------------------------------------------------


def test_an_auditor_exports_the_holders_as_csv_and_the_export_is_audited(client, auditor, two_models):
    records, first = two_models
    PromotionRequest.objects.filter(pk=first.pk).update(requested_by_name="=HYPERLINK(evil)")
    client.force_login(auditor)
    response = client.get("/audit/holders.csv", {"at": iso(at(3)), "stage": "Production"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="holders-production-20260301T120000Z.csv"'
    text = b"".join(response.streaming_content).decode()
    table = list(csv.reader(io.StringIO(text)))
    assert table[0][:6] == ["model_name", "stage", "binding", "version", "since", "via"]
    assert [row[:6] for row in table[1:]] == [
        ["churn", "Production", "stage Production", "1", "2026-03-01T11:30:00.000000+00:00", "request"],
        [
            "sales_forecast",
            "Production",
            "stage Production",
            "2",
            "2026-03-01T12:00:00.000000+00:00",
            "request",
        ],
    ]
    assert table[1][9] == "'=HYPERLINK(evil)"  # escaped against formula injection
    assert table[2][6] == str(records["takeover"].pk) and table[2][10] == "Rex;Rita"
    entry = AuditEvent.objects.filter(action="audit.exported").order_by("-sequence").first()
    assert entry.actor_username == auditor.username
    assert entry.details["report"] == "holders"
    assert entry.details["stage"] == "Production" and entry.details["rows"] == 2
    assert entry.details["at"] == "2026-03-01T12:00:00.000000+00:00"


@pytest.mark.parametrize("who", ["requester", "reviewer", "stage_admin", "outsider"])
def test_only_auditors_export_the_holders_and_the_refusal_is_audited(client, request, who):
    user = request.getfixturevalue(who)
    client.force_login(user)
    response = client.get("/audit/holders.csv", {"at": iso(at(3)), "stage": "Production"})
    assert response.status_code == 403
    denied = AuditEvent.objects.filter(action="auth.denied").order_by("-sequence").first()
    assert denied.actor_username == user.username
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


@pytest.mark.parametrize(
    "query", [{"at": "2026-03-01T09:00:00", "stage": "Production"}, {"at": iso(at(1)), "stage": "Nope"}, {}]
)
def test_a_bad_export_query_is_400_saying_why(client, auditor, query):
    client.force_login(auditor)
    response = client.get("/audit/holders.csv", query)
    assert response.status_code == 400
    assert response.content.decode().strip()
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


# --- bounded queries -------------------------------------------------------------------------


def long_history(changes: int, champion: Stage):
    """`changes` holder changes of one model: Production promotions that archive the previous
    holder, each with its entry and two reviews, and @champion moved outside the workflow."""
    model = mirror_model("busy", {1: {}})
    ModelVersion.objects.bulk_create(
        [ModelVersion(model=model, version=n, status="READY") for n in range(2, changes + 1)]
    )
    promotions = changes // 2
    production = stage("Production")
    requests = PromotionRequest.objects.bulk_create(
        [
            PromotionRequest(
                version=v,
                stage=production,
                requested_by_name="Riley",
                justification="retrain",
                status=PromotionRequest.Status.APPLIED,
                evidence={},
                evidence_sha256="0" * 64,
                created_at=at(n),
                updated_at=at(n),
                expires_at=at(n + 1),
                applied_at=at(n),
            )
            for n, v in enumerate(ModelVersion.objects.filter(model=model).order_by("version")[:promotions])
        ]
    )
    Review.objects.bulk_create(
        [
            Review(
                request=r, reviewer_name=name, decision="approve", evidence_sha256="0" * 64, created_at=at(0)
            )
            for r in requests
            for name in ("Rex", "Rita")
        ]
    )
    for n, r in enumerate(requests):
        audit.record(
            action="promotion.applied",
            meaning="Applied",
            model_name=model.name,
            request_id=r.pk,
            details={
                "archived": [n] if n else [],
                "previous_holders": [n] if n else [],
                "binding": "stage Production",
            },
        )
    DriftEvent.objects.bulk_create(
        [
            DriftEvent(
                model=model,
                version=n + 1,
                kind="alias",
                alias="champion",
                before=str(n) if n else "",
                after=str(n + 1),
                detected_at=at(n + 0.5),
            )
            for n in range(changes - promotions)
        ]
    )
    return model


@pytest.mark.parametrize("changes", [10, 1000])
def test_the_history_api_costs_the_same_queries_at_10_and_1000_changes(
    reviewer, champion, django_assert_num_queries, changes
):
    long_history(changes, champion)
    client = api_client(reviewer)
    client.get("/api/stages")  # the token's first use is recorded once; not part of the count
    # token and user, roles, model, stages, requests, reviews, audit entries, drift events
    with django_assert_num_queries(8):
        response = client.get("/api/models/busy/history")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == changes + changes // 2 - 1  # plus an Archived interval a takeover
    items = body["items"] + client.get("/api/models/busy/history?offset=1000").json()["items"]
    assert len(items) == body["count"]
    # Production and @champion have one holder each; every version archived stays Archived.
    assert sum(1 for i in items if i["until"] is None) == 1 + (changes // 2 - 1) + 1


@pytest.mark.parametrize("changes", [10, 1000])
def test_the_history_page_costs_the_same_queries_at_10_and_1000_changes(
    client, requester, champion, django_assert_num_queries, changes
):
    long_history(changes, champion)
    client.force_login(requester)
    # session, user, roles, model, stages, audit entries, requests, reviews, drift events, and
    # the frame's last sync and badge
    with django_assert_num_queries(11):
        response = client.get("/models/busy/history/")
    assert response.status_code == 200
    assert f"v{changes // 2}" in response.content.decode()


@pytest.mark.parametrize("changes", [10, 1000])
def test_the_holders_api_costs_the_same_queries_at_10_and_1000_changes(
    reviewer, champion, django_assert_num_queries, changes
):
    long_history(changes, champion)
    client = api_client(reviewer)
    client.get("/api/stages")
    # token and user, roles, stage, requests (and the audit entries of those), reviews, drift events
    with django_assert_num_queries(7):
        response = client.get("/api/holders", {"at": iso(at(changes)), "stage": "Champion"})
    assert response.status_code == 200
    assert [i["version"] for i in response.json()["items"]] == [changes - changes // 2]
