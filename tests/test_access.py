"""Walk every URL as anonymous, as a user without the role, and as the right role."""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from promotions import services
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db

# url name -> (method, needs a request id?, who may, status for them)
PAGES = {
    "queue": ("get", False, "requester", 200),
    "queue_bulk": ("post", False, "reviewer", 302),
    "request_create": ("get", False, "requester", 200),
    "request_detail": ("get", True, "reviewer", 200),
    "request_status": ("get", True, "reviewer", 200),
    "request_decide": ("post", True, "reviewer", 302),
    "request_cancel": ("post", True, "requester", 302),
    "request_retry": ("post", True, "stage_admin", 302),
    "stage_list": ("get", False, "requester", 200),
    "model_list": ("get", False, "requester", 200),
    "model_detail": ("get", "model", "requester", 200),
    "audit_log": ("get", False, "auditor", 200),
    "audit_export_csv": ("get", False, "auditor", 200),
    "audit_export_jsonl": ("get", False, "auditor", 200),
    "audit_manifest": ("get", False, "auditor", 200),
    "audit_metrics": ("get", False, "auditor", 200),
    "token_list": ("get", False, "requester", 200),
}
PUBLIC = {"login", "logout", "healthz", "mlflow_webhook"}


def our_url_names():
    names = set()

    def walk(patterns, namespace=""):
        for p in patterns:
            if isinstance(p, URLResolver):
                if p.namespace in ("admin",) or "api" in str(p.pattern):
                    continue
                walk(p.url_patterns)
            elif isinstance(p, URLPattern) and p.name:
                names.add(p.name)

    walk(get_resolver().url_patterns)
    return names


def test_every_url_is_in_the_table():
    assert our_url_names() - set(PAGES) - PUBLIC == set()


@pytest.fixture
def world(requester, reviewer, stage_admin, auditor, outsider):
    model = mirror_model("walked", {1: {"current_stage": "None"}})
    request = services.promotion_request_create(
        version=version(model, 1), stage=stage("Staging"), requested_by=requester, justification="walk"
    )
    people = {
        "requester": requester,
        "reviewer": reviewer,
        "stage_admin": stage_admin,
        "auditor": auditor,
        "outsider": outsider,
    }
    return request, people


QUERY = {"audit_manifest": "?format=csv"}


def url_for(name, needs, request):
    if needs == "model":
        return reverse(name, args=["walked"])
    url = reverse(name, args=[request.pk]) if needs else reverse(name)
    return url + QUERY.get(name, "")


@pytest.mark.parametrize("name", sorted(PAGES))
def test_anonymous_users_are_sent_to_login(client, world, name):
    if name not in our_url_names():
        pytest.skip(f"{name} is not routed in this build")
    method, needs, _, _ = PAGES[name]
    response = getattr(client, method)(url_for(name, needs, world[0]))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("name", sorted(PAGES))
def test_a_user_without_the_role_is_refused(client, world, name):
    if name not in our_url_names():
        pytest.skip(f"{name} is not routed in this build")
    method, needs, who, _ = PAGES[name]
    request, people = world
    if who == "requester" and name == "token_list":
        pytest.skip("every signed-in user manages their own tokens")
    client.force_login(people["outsider"])
    response = getattr(client, method)(url_for(name, needs, request))
    assert response.status_code in (403, 404)
    assert b"walk" not in response.content  # nothing of the request leaks


@pytest.mark.parametrize("name", sorted(PAGES))
def test_the_right_role_gets_through(client, world, name):
    if name not in our_url_names():
        pytest.skip(f"{name} is not routed in this build")
    method, needs, who, status = PAGES[name]
    request, people = world
    client.force_login(people[who])
    data = {"decision": "approve", "request_ids": [request.pk]} if method == "post" else None
    response = getattr(client, method)(url_for(name, needs, request), data)
    assert response.status_code == status, response.content[:500]


def test_unknown_ids_are_404_for_everyone_with_a_role(client, reviewer):
    client.force_login(reviewer)
    assert client.get("/requests/999999/").status_code == 404
    assert client.post("/requests/999999/decide/", {"decision": "approve"}).status_code == 404
