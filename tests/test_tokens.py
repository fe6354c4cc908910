"""Personal API tokens: the settings page and `manage.py create_api_token`."""

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from promotions import tokens
from promotions.models import ApiToken, AuditEvent

pytestmark = pytest.mark.django_db
TOKEN = re.compile(r"prm_[A-Za-z0-9_-]{43}")


def test_anonymous_users_are_sent_to_login(client):
    response = client.get("/settings/tokens/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_a_user_creates_a_token_that_is_shown_once(client, requester):
    client.force_login(requester)

    response = client.post("/settings/tokens/", {"name": "ci-pipeline"})

    assert response.status_code == 200
    (raw,) = TOKEN.findall(response.content.decode())
    token = ApiToken.objects.get()
    assert (token.user, token.name, token.prefix) == (requester, "ci-pipeline", raw[:12])
    assert token.token_hash == tokens.hash_token(raw) and raw not in token.token_hash
    assert response["Cache-Control"].startswith("max-age=0")
    again = client.get("/settings/tokens/").content.decode()
    assert raw not in again and f"{token.prefix}…" in again
    assert AuditEvent.objects.get(action="token.created").details["prefix"] == token.prefix


def test_the_new_token_works_against_the_api(client, requester):
    client.force_login(requester)
    (raw,) = TOKEN.findall(client.post("/settings/tokens/", {"name": "x"}).content.decode())
    assert Client(headers={"Authorization": f"Bearer {raw}"}).get("/api/stages").status_code == 200
    page = client.get("/settings/tokens/").content.decode()
    assert "never" not in page  # the last use is shown


def test_a_user_revokes_their_token(client, requester):
    token, raw = tokens.api_token_create(user=requester, name="old")
    client.force_login(requester)

    response = client.post("/settings/tokens/", {"revoke": token.pk}, follow=True)

    assert "Token &#x27;old&#x27; (" in response.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert "Revoked" in response.content.decode()
    assert Client(headers={"Authorization": f"Bearer {raw}"}).get("/api/stages").status_code == 401
    assert AuditEvent.objects.filter(action="token.revoked").count() == 1


def test_nobody_sees_or_revokes_anyone_elses_tokens(client, requester, reviewer):
    theirs, _ = tokens.api_token_create(user=reviewer, name="rex-secret-bot")
    client.force_login(requester)
    assert "rex-secret-bot" not in client.get("/settings/tokens/").content.decode()
    assert client.post("/settings/tokens/", {"revoke": theirs.pk}).status_code == 404
    assert client.post("/settings/tokens/", {"revoke": "nonsense"}).status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_a_user_without_any_role_may_still_manage_tokens(client, outsider):
    client.force_login(outsider)
    assert client.get("/settings/tokens/").status_code == 200


def test_creating_a_token_needs_the_csrf_token(requester):
    client = Client(enforce_csrf_checks=True)
    client.force_login(requester)
    assert client.post("/settings/tokens/", {"name": "x"}).status_code == 403
    assert not ApiToken.objects.exists()


def test_an_overlong_name_is_refused_with_a_reason(client, requester):
    client.force_login(requester)
    response = client.post("/settings/tokens/", {"name": "x" * 101})
    assert response.status_code == 422
    assert "at most 100)" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_the_page_has_no_inline_script_or_style(client, requester):
    client.force_login(requester)
    body = client.post("/settings/tokens/", {"name": "x"}).content.decode()
    assert "style=" not in body and "<script>" not in body


def test_the_command_prints_a_token_once_for_a_bot(requester):
    out, err = StringIO(), StringIO()
    call_command("create_api_token", "riley", "--name", "nightly", stdout=out, stderr=err)
    raw = out.getvalue().strip()
    assert TOKEN.fullmatch(raw)
    token = ApiToken.objects.get()
    assert (token.name, token.user) == ("nightly", requester)
    assert AuditEvent.objects.get(action="token.created").details["via"] == "cli"
    assert "it is not shown again" in err.getvalue()
    assert Client(headers={"Authorization": f"Bearer {raw}"}).get("/api/stages").status_code == 200


def test_the_command_refuses_an_unknown_user():
    with pytest.raises(CommandError, match="User 'ghost' does not exist") as error:
        call_command("create_api_token", "ghost")
    assert error.value.returncode == 2


def test_a_token_name_with_a_nul_is_refused_not_stored(client, requester):
    """PostgreSQL stores no NUL in text: refused with a reason on every database."""
    client.force_login(requester)
    response = client.post("/settings/tokens/", {"name": "ci\x00bot"})
    assert response.status_code == 422
    assert "NUL" in response.content.decode()
