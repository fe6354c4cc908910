"""Every refusal under /api/ is JSON, whatever Django or ninja would answer by default."""

import pytest
from django.test import Client

from promotions import tokens

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    _, raw = tokens.api_token_create(user=user, name="errors")
    return Client(headers={"Authorization": f"Bearer {raw}"})


def test_it_answers_an_unknown_api_url_with_json_404_even_with_debug_on(settings, requester):
    settings.DEBUG = True
    response = _client(requester).get("/api/no/such/endpoint")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["code"] == "not_found"


def test_it_answers_a_wrong_method_with_json_405_and_the_allowed_methods(requester):
    response = _client(requester).delete("/api/requests")
    assert response.status_code == 405
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["code"] == "method_not_allowed"
    assert "GET" in response["Allow"]


def test_it_refuses_an_unknown_audit_action_as_the_export_does(auditor):
    response = _client(auditor).get("/api/audit", {"action": "promotion.aproved"})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid"
    assert "promotion.aproved" in response.json()["message"]


def test_it_still_filters_the_audit_by_a_known_action(auditor):
    response = _client(auditor).get("/api/audit", {"action": "review.approved"})
    assert response.status_code == 200
    assert response.json()["items"] == []


def test_it_refuses_a_body_sent_as_text_plain_with_415(requester):
    response = _client(requester).post("/api/requests", data='{"model": "x"}', content_type="text/plain")
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_it_reads_a_body_sent_as_a_json_suffix_type(requester):
    response = _client(requester).post(
        "/api/requests", data="{}", content_type="application/merge-patch+json"
    )
    assert response.status_code == 422  # parsed as JSON, then refused for its missing fields
