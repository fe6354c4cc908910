"""Walk every URL as anonymous, as a user without the role, and as the right role."""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils.timezone import now

from promotions import services
from registry_sync.models import DriftEvent
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db

# url name -> (method, needs a request id?, who may, status for them)
PAGES = {
    "queue": ("get", False, "requester", 200),
    "queue_bulk": ("post", False, "reviewer", 302),
    "drift_acknowledge": ("post", "drift", "stage_admin", 302),
    "request_create": ("get", False, "requester", 200),
    "request_detail": ("get", True, "reviewer", 200),
    "request_status": ("get", True, "reviewer", 200),
    "request_decide": ("post", True, "reviewer", 302),
    "request_cancel": ("post", True, "requester", 302),
    "request_retry": ("post", True, "stage_admin", 302),
    # Without a reason and the confirmation: back to the request page, which says what is missing.
    "request_emergency": ("post", True, "stage_admin", 302),
    # The walked request was no emergency change: back to its page, which says so.
    "request_retrospective_review": ("post", True, "reviewer", 302),
    "stage_list": ("get", False, "requester", 200),
    "model_list": ("get", False, "requester", 200),
    "model_detail": ("get", "model", "requester", 200),
    "model_history": ("get", "model", "requester", 200),
    "audit_log": ("get", False, "auditor", 200),
    "audit_export_csv": ("get", False, "auditor", 200),
    "audit_export_jsonl": ("get", False, "auditor", 200),
    "audit_manifest": ("get", False, "auditor", 200),
    "audit_metrics": ("get", False, "auditor", 200),
    "audit_access": ("get", False, "auditor", 200),
    "audit_access_csv": ("get", False, "auditor", 200),
    "audit_access_changes_csv": ("get", False, "auditor", 200),
    "audit_emergencies": ("get", False, "auditor", 200),
    "holders_export_csv": ("get", False, "auditor", 200),
    "token_list": ("get", False, "requester", 200),
}
PUBLIC = {"login", "logout", "healthz", "mlflow_webhook"}
# No session: a bearer token or an allowed network (tests/test_metrics_endpoint.py).
PUBLIC |= {"metrics"}
# Company sign-in (tests/test_oidc.py): reached signed out; the no-role and re-authentication
# pages need any signed-in user (the latter only with a signed decision waiting in the session).
PUBLIC |= {
    "login_break_glass",
    "admin_login_redirect",
    "oidc_authentication_init",
    "oidc_authentication_callback",
    "sso_no_role",
    "sso_reauthenticate",
}


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
    DriftEvent.objects.create(
        model=model, version=1, kind="stage", before="Staging", after="None", detected_at=now()
    )
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


QUERY = {"audit_manifest": "?format=csv", "holders_export_csv": "?at=2026-03-01T09:00:00Z&stage=Production"}


def url_for(name, needs, request):
    if needs == "model":
        return reverse(name, args=["walked"])
    if needs == "drift":
        return reverse(name, args=[DriftEvent.objects.get(model__name="walked").pk])
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


# --- every wrong role, one by one ---------------------------------------------------------------

# url name -> the personas that must be refused (403, or 404 where an id is involved)
REFUSED = {
    "request_create": {"auditor", "outsider"},
    "request_decide": {"requester", "stage_admin", "auditor", "outsider"},
    "request_cancel": {"reviewer", "auditor", "outsider"},
    "request_retry": {"requester", "reviewer", "auditor", "outsider"},
    "request_emergency": {"requester", "reviewer", "auditor", "outsider"},
    "request_retrospective_review": {"requester", "stage_admin", "auditor", "outsider"},
    "drift_acknowledge": {"requester", "reviewer", "auditor", "outsider"},
    "audit_log": {"requester", "reviewer", "stage_admin", "outsider"},
    "audit_export_csv": {"requester", "reviewer", "stage_admin", "outsider"},
    "audit_export_jsonl": {"requester", "reviewer", "stage_admin", "outsider"},
    "audit_manifest": {"requester", "reviewer", "stage_admin", "outsider"},
    "audit_metrics": {"requester", "reviewer", "stage_admin", "outsider"},
    "audit_access": {"requester", "reviewer", "stage_admin", "outsider"},
    "audit_access_csv": {"requester", "reviewer", "stage_admin", "outsider"},
    "audit_access_changes_csv": {"requester", "reviewer", "stage_admin", "outsider"},
    "audit_emergencies": {"requester", "reviewer", "stage_admin", "outsider"},
    "holders_export_csv": {"requester", "reviewer", "stage_admin", "outsider"},
    **{
        name: {"outsider"}
        for name in (
            "queue",
            "queue_bulk",
            "request_detail",
            "request_status",
            "stage_list",
            "model_list",
            "model_detail",
            "model_history",
        )
    },
}
WRONG = sorted((name, who) for name, people in REFUSED.items() for who in people)


def test_every_page_says_who_is_refused():
    assert set(REFUSED) | {"token_list"} == set(PAGES)


@pytest.mark.parametrize(("name", "who"), WRONG)
def test_each_wrong_role_is_refused_and_changes_nothing(client, world, name, who):
    from promotions.models import AuditEvent, PromotionRequest, Review

    method, needs, _, _ = PAGES[name]
    request, people = world
    client.force_login(people[who])
    before = (Review.objects.count(), PromotionRequest.objects.get(pk=request.pk).status)
    data = {"decision": "approve", "request_ids": [request.pk], "comment": "x"} if method == "post" else None
    response = getattr(client, method)(url_for(name, needs, request), data)
    assert response.status_code in (403, 404), (name, who, response.status_code)
    assert b"walk" not in response.content
    assert (Review.objects.count(), PromotionRequest.objects.get(pk=request.pk).status) == before
    if method == "post":  # a refused action is on the record
        assert AuditEvent.objects.filter(action="auth.denied").exists() or who == "outsider"


def test_bulk_actions_by_a_role_that_may_not_decide_change_nothing(client, world):
    from promotions.models import PromotionRequest, Review

    request, people = world
    for who in ("requester", "stage_admin", "auditor"):
        client.force_login(people[who])
        client.post(reverse("queue_bulk"), {"decision": "approve", "request_ids": [request.pk]})
        assert Review.objects.count() == 0, who
        assert PromotionRequest.objects.get(pk=request.pk).status == "pending"


# --- the admin's URLs ---------------------------------------------------------------------------


def admin_urls(request_pk: int) -> list[str]:
    from django.contrib.auth.models import Group

    from promotions.models import (
        AuditEvent,
        OutboundDelivery,
        OutboundEmail,
        PromotionRequest,
        Stage,
        WebhookEndpoint,
    )

    urls = ["/admin/"]
    for model, pk in (
        (Stage, Stage.objects.values_list("pk", flat=True).first()),
        (WebhookEndpoint, None),
        (OutboundDelivery, None),
        (OutboundEmail, None),
        (PromotionRequest, request_pk),
        (AuditEvent, AuditEvent.objects.values_list("pk", flat=True).first()),
        (Group, Group.objects.values_list("pk", flat=True).first()),
    ):
        meta = model._meta
        base = f"/admin/{meta.app_label}/{meta.model_name}/"
        urls += [base, base + "add/"]
        if pk:
            urls += [f"{base}{pk}/change/", f"{base}{pk}/delete/", f"{base}{pk}/history/"]
    return urls


@pytest.mark.parametrize("who", ["anonymous", "requester", "reviewer", "auditor", "outsider"])
def test_the_admin_is_closed_to_everyone_but_staff(client, world, who):
    request, people = world
    if who != "anonymous":
        client.force_login(people[who])
    for url in admin_urls(request.pk):
        response = client.get(url)
        assert response.status_code == 302, (who, url, response.status_code)
        assert response["Location"].startswith(("/admin/login/", "/accounts/login/")), (who, url)


def test_a_stage_admin_in_the_admin_edits_the_catalog_and_nothing_else(client, world):
    from django.contrib.auth.models import Permission

    request, people = world
    admin = people["stage_admin"]
    admin.user_permissions.set(Permission.objects.filter(codename__endswith="_stage"))
    client.force_login(admin)
    assert client.get("/admin/promotions/stage/").status_code == 200
    refused = [
        "/admin/auth/user/",
        "/admin/auth/group/",
        "/admin/promotions/auditevent/add/",
        "/admin/promotions/promotionrequest/add/",
        f"/admin/promotions/promotionrequest/{request.pk}/delete/",
    ]
    for url in refused:
        assert client.get(url).status_code == 403, url
    response = client.post(f"/admin/promotions/promotionrequest/{request.pk}/change/", {"status": "approved"})
    assert response.status_code == 403
    request.refresh_from_db()
    assert request.status == "pending"
