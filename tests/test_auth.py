"""Every page but login and /healthz needs a signed-in user; the four roles exist."""

import pytest
from django.contrib.auth.models import Group

from promotions import roles


@pytest.mark.django_db
def test_the_four_role_groups_exist():
    assert set(Group.objects.values_list("name", flat=True)) >= set(roles.ALL_ROLES)


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/", "/models/", "/admin/"])
def test_it_redirects_anonymous_users_to_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/") or response["Location"].startswith(
        "/admin/login/"
    )


@pytest.mark.django_db
def test_the_login_page_is_public(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    assert b"Sign in" in response.content


@pytest.mark.django_db
def test_a_user_signs_in_and_out(client, requester):
    response = client.post("/accounts/login/", {"username": "riley", "password": "pw-riley"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302


@pytest.mark.django_db
def test_a_wrong_password_is_refused(client, requester):
    response = client.post("/accounts/login/", {"username": "riley", "password": "nope"})
    assert response.status_code == 200
    assert b"didn&#x27;t match" in response.content or b"didn't match" in response.content
