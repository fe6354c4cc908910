"""Any value in any HTML form field or query parameter never gives a 5xx (RELIABILITY 32).

Hypothesis drives every page with the parameters it reads, as each persona, as a plain and as
an htmx request: characters `str.isdigit()` accepts but `int()` refuses, NUL, 100k characters,
numbers beyond every column, floats, markup, repeated keys and uploaded files where text is
expected. A 4xx must say something (a non-empty body). The JSON API has its own fuzzer
(tests/test_schemathesis.py).
"""

from __future__ import annotations

import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promotions import services
from promotions.models import PromotionRequest
from registry_sync.models import DriftEvent, RegisteredModel, SyncRun
from registry_sync.services import sync_registry
from tests.factories import stage
from tests.registry_helpers import make_version
from tests.test_access import PAGES, PUBLIC

pytestmark = pytest.mark.django_db

ROLES = ("requester", "reviewer", "stage_admin", "auditor", "outsider")

# Values chosen to break parsers, mixed with valid ones so that the deeper paths run too.
NASTY = (
    "²",
    "٣",
    "①",
    "١٢",
    "\x00",
    "1\x00",
    "",
    " ",
    "\t\n",
    "-1",
    "0",
    "1.5",
    "1e9",
    "NaN",
    "-inf",
    str(2**31),
    str(2**63),
    str(10**30),
    f"-{10**30}",
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "😀",
    "true",
    "[]",
    "{}",
    "null",
    "x" * 100_000,
    "9" * 100_000,
    "1",
    "2",
    "Staging",
    "Production",
    "approve",
    "reject",
    "choices",
    "csv",
    "jsonl",
    "mine",
    "all",
    "pending",
    "2026-11-25",
    "2026-11-25T14:00:00Z",
    "request.created",
)
VALUE = st.one_of(
    st.sampled_from(NASTY),
    # Lone surrogates cannot travel in UTF-8, so no browser can send them.
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    st.integers().map(str),
    st.floats().map(str),
)
UPLOAD = st.builds(lambda: SimpleUploadedFile("x.txt", b"not a form value"))
POST_VALUE = st.one_of(VALUE, VALUE, VALUE, UPLOAD)


def _values(value_strategy):
    # Absent, once, or repeated (a QueryDict with several values for one key).
    return st.one_of(st.none(), value_strategy, st.lists(value_strategy, min_size=2, max_size=3))


def _params(names, value_strategy):
    return st.fixed_dictionaries({name: _values(value_strategy) for name in names}).map(
        lambda data: {k: v for k, v in data.items() if v is not None}
    )


AUDIT_FILTERS = ("since", "until", "model", "stage", "actor", "action", "text")

# (name, method, url template, parameters read). `{pk}` is a request that exists, `{model}` a
# mirrored model; `{path}` is fuzzed too.
ENDPOINTS = [
    ("queue", "get", "/", ("tab", "status", "stage", "model", "page")),
    ("queue_bulk", "post", "/queue/bulk/", ("decision", "comment", "request_ids")),
    ("stage_list", "get", "/stages/", ()),
    ("model_list", "get", "/models/", ("q", "page")),
    ("model_detail", "get", "/models/{model}/", ("page",)),
    ("model_detail_path", "get", "/models/{path}/", ("page",)),
    ("model_history", "get", "/models/{model}/history/", ()),
    ("model_history_path", "get", "/models/{path}/history/", ()),
    ("request_create", "get", "/requests/new/", ("model", "version", "stage", "rollback", "part")),
    (
        "request_create",
        "post",
        "/requests/new/",
        ("model", "version", "stage", "rollback", "part", "justification"),
    ),
    ("request_detail", "get", "/requests/{pk}/", ()),
    ("request_detail_path", "get", "/requests/{number}/", ()),
    ("request_status", "get", "/requests/{pk}/status/", ()),
    (
        "request_decide",
        "post",
        "/requests/{pk}/decide/",
        ("decision", "comment", "evidence_sha256", "meaning", "password", "signature_token"),
    ),
    ("request_cancel", "post", "/requests/{pk}/cancel/", ()),
    ("request_retry", "post", "/requests/{pk}/retry/", ()),
    ("request_emergency", "post", "/requests/{pk}/emergency/", ("reason", "confirm")),
    ("request_retrospective_review", "post", "/requests/{pk}/retrospective-review/", ("comment",)),
    ("drift_acknowledge", "post", "/drift/{drift}/acknowledge/", ("comment",)),
    ("drift_acknowledge_path", "post", "/drift/{number}/acknowledge/", ("comment",)),
    ("audit_log", "get", "/audit/", (*AUDIT_FILTERS, "before", "after")),
    ("audit_export_csv", "get", "/audit/export.csv", (*AUDIT_FILTERS, "through")),
    ("audit_export_jsonl", "get", "/audit/export.jsonl", (*AUDIT_FILTERS, "through")),
    ("audit_manifest", "get", "/audit/manifest.json", (*AUDIT_FILTERS, "through", "format")),
    ("audit_metrics", "get", "/audit/metrics/", ()),
    ("audit_access", "get", "/audit/access/", ("from", "until")),
    ("audit_access_csv", "get", "/audit/access.csv", ()),
    ("audit_access_changes_csv", "get", "/audit/access/changes.csv", ("from", "until")),
    ("audit_emergencies", "get", "/audit/emergencies/", ()),
    ("holders_export_csv", "get", "/audit/holders.csv", ("at", "stage")),
    ("token_list", "get", "/settings/tokens/", ()),
    ("token_list", "post", "/settings/tokens/", ("name", "revoke")),
    ("login", "get", "/accounts/login/", ("next",)),
    ("login", "post", "/accounts/login/", ("username", "password", "next")),
    ("login_break_glass", "post", "/accounts/login/break-glass/", ("username", "password", "next")),
    ("admin_login_redirect", "get", "/admin/login/", ("next",)),
    ("oidc_authentication_init", "get", "/oidc/authenticate/", ("next",)),
    ("oidc_authentication_callback", "get", "/oidc/callback/", ("code", "state", "error")),
    ("sso_no_role", "get", "/oidc/no-role/", ()),
    ("sso_reauthenticate", "get", "/oidc/reauthenticate/{pk}/", ()),
    ("sso_reauthenticate_path", "get", "/oidc/reauthenticate/{number}/", ()),
    ("healthz", "get", "/healthz", ()),
    ("metrics", "get", "/metrics", ()),
    ("mlflow_webhook", "post", "/hooks/mlflow/", ("data", "entity", "action")),
]
EXAMPLES = 15


def test_every_page_and_its_parameters_are_in_the_table():
    driven = {name.removesuffix("_path") for name, *_ in ENDPOINTS}
    # Logging out takes no parameters, and would sign the persona out for the next example.
    assert set(PAGES) | PUBLIC - {"logout"} <= driven


@pytest.fixture(scope="module")
def model_in_mlflow(mlflow_server):
    """Registered once for the module: MLflow takes a second per version."""
    name = f"hostile_{uuid.uuid4().hex[:8]}"
    make_version(mlflow_server.client(), name, metrics={"accuracy": 0.9})
    make_version(mlflow_server.client(), name, metrics={"accuracy": 0.95})
    return name


@pytest.fixture
def world(registry, model_in_mlflow, requester, reviewer, stage_admin, auditor, outsider):
    """A model in MLflow and the mirror, and an open request on it: pages have something to show,
    and a valid-looking filing reaches MLflow, which answers."""
    model_name = model_in_mlflow
    sync_registry(trigger=SyncRun.Trigger.COMMAND, model_name=model_name)
    promotion = services.promotion_request_create(
        version=services.version_get(model_name=model_name, version=1, refresh=False),
        stage=stage("Staging"),
        requested_by=requester,
        justification="w",
    )
    people = {
        "requester": requester,
        "reviewer": reviewer,
        "stage_admin": stage_admin,
        "auditor": auditor,
        "outsider": outsider,
    }
    clients = {}
    for role, user in people.items():
        clients[role] = Client()
        clients[role].force_login(user)
    clients["anonymous"] = Client()
    drift = DriftEvent.objects.create(
        model=RegisteredModel.objects.get(name=model_name),
        version=1,
        kind="stage",
        before="Staging",
        after="None",
        detected_at=timezone.now(),
    )
    return {"pk": promotion.pk, "model": model_name, "drift": drift.pk, "clients": clients}


def _url(template: str, world, path: str, number: int) -> str:
    return template.format(
        pk=world["pk"], model=world["model"], drift=world["drift"], path=path, number=number
    )


PATH_TEXT = st.one_of(
    st.sampled_from(NASTY[:30]), st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30)
).filter(lambda text: text.strip("/") != "" and "\x00" not in text)


@pytest.mark.parametrize(
    ("name", "method", "template", "names"),
    ENDPOINTS,
    ids=[f"{method}-{name}" for name, method, *_ in ENDPOINTS],
)
def test_no_value_gives_a_server_error(world, name, method, template, names):
    value_strategy = POST_VALUE if method == "post" else VALUE
    signed_out = (
        "login",
        "login_break_glass",
        "admin_login_redirect",
        "oidc_authentication_init",
        "oidc_authentication_callback",
    )
    roles = (*ROLES, "anonymous") if name in (*signed_out, "healthz", "metrics", "mlflow_webhook") else ROLES

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(
        role=st.sampled_from(roles),
        htmx=st.booleans(),
        params=_params(names, value_strategy),
        path=PATH_TEXT,
        number=st.one_of(st.integers(min_value=0, max_value=10**30), st.sampled_from([0, 2**31, 2**63])),
    )
    def run(role, htmx, params, path, number):
        client = world["clients"][role]
        url = _url(template, world, path, number)
        headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
        if method == "get":
            response = client.get(url, params, **headers)
        else:
            response = client.post(url, params, **headers)
        assert response.status_code < 500, (role, htmx, url, params)
        if response.status_code >= 400 and response.status_code != 405:
            body = b"".join(response) if response.streaming else response.content
            assert body.strip(), (response.status_code, role, url, params)

    run()


# Each of these in each parameter, one at a time, as the persona that gets furthest into the
# view: the random search above may miss a single value, this sweep does not.
SWEEP = ("²", "٣", "①", "\x00", "x" * 100_000, "-1", "0", str(10**30), "1.5", "", " ", "<b>&</b>")
FURTHEST = {
    "queue_bulk": "reviewer",
    "request_decide": "reviewer",
    "request_retry": "stage_admin",
    "request_emergency": "stage_admin",
    "request_retrospective_review": "reviewer",
    "holders_export_csv": "auditor",
}


def _furthest(name: str) -> str:
    if name.startswith("audit_"):
        return "auditor"
    return FURTHEST.get(name, "requester")


@pytest.mark.parametrize(
    ("name", "method", "template", "names"),
    [endpoint for endpoint in ENDPOINTS if endpoint[3]],
    ids=[f"{method}-{name}" for name, method, _, names in ENDPOINTS if names],
)
def test_each_hostile_value_in_each_parameter_is_answered_below_500(world, name, method, template, names):
    client = world["clients"][_furthest(name)]
    url = _url(template, world, "x", 1)
    send = client.get if method == "get" else client.post
    for parameter in names:
        for value in SWEEP:
            response = send(url, {parameter: value})
            assert response.status_code < 500, (parameter, value[:20])
            if response.status_code >= 400:
                body = b"".join(response) if response.streaming else response.content
                assert body.strip(), (response.status_code, parameter, value[:20])


def test_a_non_ascii_digit_version_is_refused_with_a_message(world):
    response = world["clients"]["requester"].get("/requests/new/", {"model": world["model"], "version": "²"})
    assert response.status_code == 400
    assert "version" in response.content.decode().lower()


def test_bulk_ids_in_other_digits_are_refused_with_a_message(world):
    response = world["clients"]["reviewer"].post(
        "/queue/bulk/", {"decision": "approve", "request_ids": [str(world["pk"]), "٣"]}
    )
    assert response.status_code == 400
    assert "٣" in response.content.decode()
    assert PromotionRequest.objects.get(pk=world["pk"]).reviews.count() == 0


def test_revoking_a_token_by_an_odd_id_is_refused(world):
    response = world["clients"]["requester"].post("/settings/tokens/", {"revoke": "①"})
    assert 400 <= response.status_code < 500
    assert response.content.strip()
