"""Company sign-in against a real OpenID Connect provider process (tests/oidc_provider.py)."""

from __future__ import annotations

import base64
import json
import re
import time
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from django.contrib.auth.models import User

from promotions import roles
from promotions.identity import provider as discovery
from promotions.identity.backend import SsoBackend
from promotions.identity.middleware import SESSION_REFRESH_DUE
from promotions.models import AuditEvent, Review, SsoIdentity
from promotions.services.identity import SignInRefused
from tests import oidc_provider
from tests.conftest import make_user
from tests.factories import request_on_signing_stage
from tests.oidc_provider import CLIENT_ID
from tests.test_settings import run_check

pytestmark = pytest.mark.django_db


def sign_in(client, oidc, sub: str):
    start = client.get("/oidc/authenticate/")
    assert start.status_code == 302, start.content[:300]
    return client.get(oidc.authorize(start["Location"], sub))


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("sequence"))


def role_of(username: str) -> set[str]:
    return set(User.objects.get(username=username).groups.values_list("name", flat=True))


def test_the_login_page_offers_the_provider_by_name(client, sso):
    page = client.get("/accounts/login/").content.decode()
    assert "Sign in with Acme SSO" in page
    assert 'name="password"' in page


def test_the_start_asks_for_pkce_state_and_nonce(client, sso):
    location = client.get("/oidc/authenticate/")["Location"]
    assert location.startswith(f"{sso.issuer}/oauth2/authorize?")
    for parameter in (
        "code_challenge=",
        "code_challenge_method=S256",
        "state=",
        "nonce=",
        f"client_id={CLIENT_ID}",
    ):
        assert parameter in location


def test_a_first_sign_in_creates_the_user_with_roles_from_groups(client, sso):
    sso.set_user(
        "sub-ada",
        preferred_username="ada",
        email="ada@example.com",
        name="Ada Lovelace",
        groups=["ml-reviewers", "other"],
    )
    response = sign_in(client, sso, "sub-ada")
    assert response.status_code == 302 and response["Location"] == "/"
    user = User.objects.get(username="ada")
    assert user.get_full_name() == "Ada Lovelace" and user.email == "ada@example.com"
    assert not user.has_usable_password()
    assert role_of("ada") == {roles.REVIEWERS}
    identity = SsoIdentity.objects.get(user=user)
    assert (identity.issuer, identity.subject, identity.last_groups) == (
        sso.issuer,
        "sub-ada",
        ["ml-reviewers", "other"],
    )
    assert identity.last_sign_in_at is not None
    [signed_in] = events("auth.signed_in")
    assert signed_in.details["via"] == "oidc" and signed_in.actor_username == "ada"
    [added] = events("user.group_added")
    assert added.details == {"username": "ada", "group": roles.REVIEWERS, "via": "oidc"}
    assert client.get("/").status_code == 200


def test_the_user_name_falls_back_to_the_email(client, sso):
    sso.set_user("sub-bob", email="bob@example.com", groups=["ml-reviewers"])
    sign_in(client, sso, "sub-bob")
    assert SsoIdentity.objects.get(subject="sub-bob").user.username == "bob@example.com"


def test_a_group_removed_at_the_provider_takes_the_role_away_at_the_next_sign_in(client, sso):
    sso.set_user("sub-cy", preferred_username="cy", groups=["ml-reviewers", "ml-platform"])
    sign_in(client, sso, "sub-cy")
    assert role_of("cy") == {roles.REVIEWERS, roles.STAGE_ADMINS}
    client.logout()
    sso.set_user("sub-cy", preferred_username="cy", groups=["ml-platform"])
    sign_in(client, sso, "sub-cy")
    assert role_of("cy") == {roles.STAGE_ADMINS}
    [removed] = events("user.group_removed")
    assert removed.details == {"username": "cy", "group": roles.REVIEWERS, "via": "oidc"}
    assert User.objects.filter(username="cy").count() == 1


def test_the_refresh_follows_the_groups_and_a_refused_refresh_deactivates(client, sso):
    sso.set_user("sub-dee", preferred_username="dee", groups=["ml-reviewers"])
    sign_in(client, sso, "sub-dee")
    sso.set_user("sub-dee", preferred_username="dee", groups=[])
    session = client.session
    session[SESSION_REFRESH_DUE] = 0
    session.save()
    assert client.get("/").status_code in (200, 403)
    assert role_of("dee") == set()
    assert events("user.group_removed")[0].details["via"] == "oidc"

    sso.revoke("sub-dee")
    session = client.session
    session[SESSION_REFRESH_DUE] = 0
    session.save()
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert not User.objects.get(username="dee").is_active
    assert events("user.deactivated")[0].details["via"] == "oidc"
    assert SsoIdentity.objects.get(subject="sub-dee").deactivated_by_provider

    # The provider vouches for the person again: the account comes back.
    sso.set_user("sub-dee", preferred_username="dee", groups=["ml-reviewers"])
    assert sign_in(client, sso, "sub-dee").status_code == 302
    assert User.objects.get(username="dee").is_active
    assert events("user.activated")[0].details["via"] == "oidc"


def test_an_unmapped_group_gives_no_role_and_a_page_that_says_so(client, sso):
    sso.set_user(
        "sub-eve", preferred_username="eve", name="<script>alert(1)</script>", groups=["<b>sales</b>"]
    )
    response = sign_in(client, sso, "sub-eve")
    assert response["Location"] == "/oidc/no-role/"
    assert role_of("eve") == set()
    page = client.get("/oidc/no-role/").content.decode()
    assert "You have no role here" in page
    assert "&lt;b&gt;sales&lt;/b&gt;" in page and "<b>sales</b>" not in page
    assert "<script>alert(1)</script>" not in page


def test_a_wrong_state_is_refused_and_audited(client, sso):
    sso.set_user("sub-fay", preferred_username="fay")
    start = client.get("/oidc/authenticate/")
    back = sso.authorize(start["Location"], "sub-fay")
    forged = back.replace("state=", "state=forged")
    response = client.get(forged)
    assert response.status_code == 400
    assert "does not belong to a sign-in started here" in response.content.decode()
    assert not User.objects.filter(username="fay").exists()
    assert events("auth.oidc_refused")[0].details["reason"] == "state"


def test_a_wrong_nonce_is_refused_and_audited(client, sso):
    sso.set_user("sub-gus", preferred_username="gus")
    start = client.get("/oidc/authenticate/")
    session = client.session
    for state in session["oidc_states"]:
        session["oidc_states"][state]["nonce"] = "another-nonce"
    session.save()
    response = client.get(sso.authorize(start["Location"], "sub-gus"))
    assert response.status_code == 400
    assert not User.objects.filter(username="gus").exists()
    assert events("auth.oidc_refused")[0].details["reason"] == "nonce"
    assert events("auth.login_failed") == []  # one entry per refusal, the one that says why
    assert "_auth_user_id" not in client.session


def test_an_expired_id_token_is_refused(settings, sso):
    expiring = oidc_provider.start(token_max_age=1)
    try:
        settings.OIDC_ISSUER = expiring.issuer
        settings.OIDC_CLOCK_SKEW_SECONDS = 0
        discovery.forget()
        expiring.set_user("sub-hal", preferred_username="hal")
        token = expiring.id_token(sub="sub-hal", client_id=CLIENT_ID)
        expires = jwt.decode(token, options={"verify_signature": False})["exp"]
        time.sleep(max(0.0, expires - time.time()) + 0.05)  # waits for the token's own expiry, < 1 s
        with pytest.raises(SignInRefused) as refused:
            SsoBackend().verify_token(token, nonce="n-1")
    finally:
        oidc_provider.stop(expiring)
    assert refused.value.reason == "expired"


@pytest.mark.parametrize(
    ("change", "reason"),
    [("audience", "audience"), ("issuer", "issuer"), ("tampered", "signature"), ("nonce", "nonce")],
)
def test_an_id_token_that_does_not_check_out_is_refused(sso, change, reason):
    sso.set_user("sub-ivy", preferred_username="ivy", groups=["ml-platform"])
    client_id = "someone-else" if change == "audience" else CLIENT_ID
    token = sso.id_token(
        sub="sub-ivy", client_id=client_id, host="localhost" if change == "issuer" else "127.0.0.1"
    )
    if change == "tampered":
        header, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["groups"] = ["ml-platform", "ml-reviewers"]
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        token = f"{header}.{payload}.{signature}"
    with pytest.raises(SignInRefused) as refused:
        SsoBackend().verify_token(token, nonce="other" if change == "nonce" else "n-1")
    assert refused.value.reason == reason
    assert (
        SsoBackend().verify_token(sso.id_token(sub="sub-ivy", client_id=CLIENT_ID), nonce="n-1")["sub"]
        == "sub-ivy"
    )


def test_a_provider_that_is_down_gets_a_page_that_says_so_with_the_password_form(client, sso, settings):
    settings.OIDC_ISSUER = f"http://127.0.0.1:{oidc_provider.free_port()}"
    discovery.forget()
    response = client.get("/oidc/authenticate/")
    assert response.status_code == 503
    page = response.content.decode()
    assert "Acme SSO is not answering" in page and 'name="password"' in page


def test_a_local_account_with_the_same_name_is_never_taken_over(client, sso):
    make_user("jo", roles.STAGE_ADMINS)
    sso.set_user("sub-jo", preferred_username="jo", groups=["ml-reviewers"])
    response = sign_in(client, sso, "sub-jo")
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session
    assert role_of("jo") == {roles.STAGE_ADMINS}
    assert events("auth.oidc_refused")[0].details["reason"] == "username_taken"


def test_with_local_login_off_only_superusers_use_a_password(client, sso, settings):
    settings.LOCAL_LOGIN = False
    make_user("kim", roles.REVIEWERS)
    User.objects.create_superuser("root", password="pw-root-long-enough")
    page = client.get("/accounts/login/").content.decode()
    assert "Sign in with Acme SSO" in page and 'name="password"' not in page
    refused = client.post("/accounts/login/", {"username": "kim", "password": "pw-kim"})
    assert refused.status_code == 403 and "turned off" in refused.content.decode()
    assert "_auth_user_id" not in client.session
    not_super = client.post("/accounts/login/break-glass/", {"username": "kim", "password": "pw-kim"})
    assert not_super.status_code == 200 and "Only superusers" in not_super.content.decode()
    assert "_auth_user_id" not in client.session
    ok = client.post("/accounts/login/break-glass/", {"username": "root", "password": "pw-root-long-enough"})
    assert ok.status_code == 302
    assert client.session["_auth_user_id"] == str(User.objects.get(username="root").pk)


def test_the_admin_signs_in_on_the_same_pages(client, sso, settings):
    assert client.get("/admin/login/?next=/admin/")["Location"] == "/accounts/login/?next=%2Fadmin%2F"
    settings.LOCAL_LOGIN = False
    assert client.get("/admin/login/")["Location"] == "/accounts/login/break-glass/"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"OIDC_ISSUER": "http://idp", "OIDC_CLIENT_ID": "c", "OIDC_ROLE_MAP": "ml=Admins"},
            "OIDC_ROLE_MAP entry",
        ),
        ({"OIDC_ISSUER": "http://idp"}, "OIDC_CLIENT_ID is required"),
        ({"LOCAL_LOGIN": "false"}, "LOCAL_LOGIN=false needs OIDC_ISSUER"),
    ],
)
def test_bad_sign_in_settings_stop_start_up_with_one_line(env, expected):
    result = run_check(**env)
    assert result.returncode == 2 and expected in result.stderr


def test_the_break_glass_form_is_absent_while_local_login_is_on(client, sso):
    assert client.get("/accounts/login/break-glass/").status_code == 404


def test_without_an_issuer_company_sign_in_is_off(client):
    assert "Sign in with" not in client.get("/accounts/login/").content.decode()
    assert client.get("/oidc/authenticate/").status_code == 404


def test_the_no_role_page_needs_a_signed_in_user(client, outsider):
    assert client.get("/oidc/no-role/")["Location"].startswith("/accounts/login/")
    client.force_login(outsider)
    assert "You have no role here" in client.get("/oidc/no-role/").content.decode()


@pytest.mark.parametrize(
    "query",
    ["?code=x&state=<script>", "?error=<b>denied</b>&state=x", "?code=" + "x" * 5000, "?state=&code=", ""],
)
def test_a_hostile_callback_gets_a_clear_refusal(client, sso, query):
    response = client.get("/oidc/callback/" + query)
    assert response.status_code == 400
    page = response.content.decode()
    assert "Sign-in refused" in page and "<script>" not in page and "<b>denied</b>" not in page


# --- signatures by a fresh sign-in at the provider --------------------------------------------


@pytest.fixture
def signing_request(requester):
    return request_on_signing_stage(requester)


def hidden_fields(html: str) -> dict:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))


def post_signed_decision(client, sso, promotion):
    page = client.get(f"/requests/{promotion.pk}/").content.decode()
    assert "You sign by signing in again at Acme SSO" in page and 'name="password"' not in page
    fields = hidden_fields(page)
    body = {"decision": "approve", "comment": "fine <b>work</b>", "meaning": "Approved for release"}
    response = client.post(f"/requests/{promotion.pk}/decide/", {**fields, **body})
    assert response.status_code == 302 and response["Location"] == f"/oidc/reauthenticate/{promotion.pk}/"
    start = client.get(response["Location"])
    assert "prompt=login" in start["Location"] and "max_age=0" in start["Location"]
    return start["Location"]


def test_an_sso_reviewer_signs_by_signing_in_again_at_the_provider(client, sso, signing_request):
    sso.set_user("sub-rae", preferred_username="rae", name="Rae Viewer", groups=["ml-reviewers"])
    sign_in(client, sso, "sub-rae")
    authorize = post_signed_decision(client, sso, signing_request)
    assert not Review.objects.exists()
    confirm = client.get(sso.authorize(authorize, "sub-rae"))
    page = confirm.content.decode()
    assert confirm.status_code == 200 and "Sign and approve" in page
    assert "fine &lt;b&gt;work&lt;/b&gt;" in page
    body = hidden_fields(page)
    assert client.post(f"/requests/{signing_request.pk}/decide/", body).status_code == 302
    review = Review.objects.get()
    assert (review.signer_username, review.signer_name, review.signed_meaning) == (
        "rae",
        "Rae Viewer",
        "Approved for release",
    )
    # The fresh sign-in signs one decision: the same confirmation again signs nothing.
    again = client.post(f"/requests/{signing_request.pk}/decide/", body, HTTP_HX_REQUEST="true")
    assert again.status_code == 422
    assert Review.objects.count() == 1


def test_the_stage_catalog_says_how_sso_users_sign(client, sso, signing_request, reviewer):
    client.force_login(reviewer)
    page = client.get("/stages/").content.decode()
    assert "single sign-on users sign in again at Acme SSO instead" in page


def test_a_fresh_sign_in_by_someone_else_signs_nothing(client, sso, signing_request):
    sso.set_user("sub-ray", preferred_username="ray", groups=["ml-reviewers"])
    sso.set_user("sub-mallory", preferred_username="mallory", groups=["ml-reviewers"])
    sign_in(client, sso, "sub-ray")
    authorize = post_signed_decision(client, sso, signing_request)
    refused = client.get(sso.authorize(authorize, "sub-mallory"))
    assert refused.status_code == 403
    assert "another person" in refused.content.decode()
    assert not Review.objects.exists()
    assert events("signature.refused")[0].details["reason"] == "the provider signed in another person"
    # Nor can the decision be forced through without the proof.
    fields = hidden_fields(client.get(f"/requests/{signing_request.pk}/").content.decode())
    body = {**fields, "decision": "approve", "meaning": "Approved for release", "reauth_key": "guessed"}
    assert (
        client.post(f"/requests/{signing_request.pk}/decide/", body, HTTP_HX_REQUEST="true").status_code
        == 422
    )
    assert not Review.objects.exists()


def test_a_deactivated_sso_user_loses_their_session_at_once(client, sso):
    sso.set_user("sub-lou", preferred_username="lou", groups=["ml-reviewers"])
    sign_in(client, sso, "sub-lou")
    assert client.get("/").status_code == 200
    User.objects.filter(username="lou").update(is_active=False)
    assert client.get("/")["Location"].startswith("/accounts/login/")


def test_cancelling_at_the_provider_while_signing_signs_nothing_and_keeps_the_session(
    client, sso, signing_request
):
    sso.set_user("sub-max", preferred_username="max", groups=["ml-reviewers"])
    sign_in(client, sso, "sub-max")
    authorize = post_signed_decision(client, sso, signing_request)
    # What a provider sends back when the person cancels (the mock's own Deny drops the state).
    state = parse_qs(urlsplit(authorize).query)["state"][0]
    response = client.get(f"/oidc/callback/?error=access_denied&state={state}")
    assert response.status_code == 302 and response["Location"] == f"/requests/{signing_request.pk}/"
    assert client.get("/").status_code == 200
    assert not Review.objects.exists()


def test_refused_callbacks_never_lock_company_sign_in_for_everyone_behind_one_address(client, sso, settings):
    # Everyone at an office signs in from one address: five forged callbacks from it must not
    # lock the others out. The provider guards its own passwords; django-axes guards ours.
    for attempt in range(settings.AXES_FAILURE_LIMIT + 1):
        sso.set_user(f"sub-x{attempt}", preferred_username=f"x{attempt}")
        start = client.get("/oidc/authenticate/")
        session = client.session
        for state in session["oidc_states"]:
            session["oidc_states"][state]["nonce"] = "another-nonce"
        session.save()
        assert client.get(sso.authorize(start["Location"], f"sub-x{attempt}")).status_code == 400
    assert len(events("auth.oidc_refused")) == settings.AXES_FAILURE_LIMIT + 1

    sso.set_user("sub-kim", preferred_username="kim", groups=["ml-platform"])
    sign_in(client, sso, "sub-kim")

    assert client.session["_auth_user_id"] == str(User.objects.get(username="kim").pk)
