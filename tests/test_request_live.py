"""Every open request page follows the request: the panel polls in every open state, and an
unchanged request costs one read by primary key and no body."""

import html
import re

import pytest

from promotions import polling, selectors, services
from promotions.models import PromotionRequest
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db


@pytest.fixture
def pending(requester):
    sales = mirror_model(
        "sales_forecast", {3: {"current_stage": "Production"}, 5: {"current_stage": "Staging"}}
    )
    return services.promotion_request_create(
        version=version(sales, 5), stage=stage("Production"), requested_by=requester, justification="Q3"
    )


def _seen(promotion):
    return selectors.request_seen(promotion.pk)


def _poll(client, promotion, seen, key=""):
    query = {"seen": seen, **({"key": key} if key else {})}
    return client.get(f"/requests/{promotion.pk}/status/", query, HTTP_HX_REQUEST="true")


def _page_poll_url(client, promotion) -> str:
    """The poll URL the request page hands to htmx."""
    body = client.get(f"/requests/{promotion.pk}/").content.decode()
    return html.unescape(re.search(r'hx-get="([^"]+/status/[^"]+)"', body).group(1))


def test_a_pending_request_page_polls_with_its_version_and_key(client, requester, pending):
    client.force_login(requester)
    body = client.get(f"/requests/{pending.pk}/").content.decode()
    assert f'hx-get="/requests/{pending.pk}/status/?seen={_seen(pending)}&amp;key=' in body
    assert 'hx-trigger="every 3s"' in body


def test_an_unchanged_request_answers_204_after_one_read_of_the_row(
    client, requester, pending, django_assert_num_queries
):
    client.force_login(requester)
    url = _page_poll_url(client, pending)
    # The page's key stands for the sign-in: no session, user or roles, one read of the row.
    with django_assert_num_queries(1) as captured:
        response = client.get(url, HTTP_HX_REQUEST="true")
    assert response.status_code == 204 and response.content == b""
    assert '"updated_at"' in captured.captured_queries[0]["sql"]
    assert "promotions_promotionrequest" in captured.captured_queries[0]["sql"]


def test_without_a_key_the_poll_signs_in_as_a_page_does(
    client, requester, pending, django_assert_num_queries
):
    client.force_login(requester)
    seen = _seen(pending)
    # Session, user, the user's groups (the role check), and one read of the request's row.
    with django_assert_num_queries(4):
        response = _poll(client, pending, seen)
    assert response.status_code == 204


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(
            lambda pending: polling.poll_key(user_id=1, request_id=pending.pk + 1), id="another request's"
        ),
        pytest.param(
            lambda pending: polling.poll_key(user_id=1, request_id=pending.pk)[:-2] + "xx", id="forged"
        ),
        pytest.param(lambda pending: "garbage:" * 40, id="garbage"),
    ],
)
def test_a_key_that_is_not_this_requests_earns_nothing(client, outsider, pending, key):
    client.force_login(outsider)  # no role: only the key could answer
    response = _poll(client, pending, _seen(pending), key=key(pending))
    assert response.status_code == 403


def test_an_expired_key_earns_nothing(client, outsider, pending, monkeypatch):
    key = polling.poll_key(user_id=outsider.pk, request_id=pending.pk)
    monkeypatch.setattr(polling, "POLL_KEY_SECONDS", -1)
    client.force_login(outsider)
    assert _poll(client, pending, _seen(pending), key=key).status_code == 403


def test_a_key_shows_no_change_to_someone_who_lost_their_role(client, requester, reviewer, pending):
    """The key answers only "unchanged": what changed is shown after the role check."""
    client.force_login(requester)
    url = _page_poll_url(client, pending)
    requester.groups.clear()
    assert client.get(url, HTTP_HX_REQUEST="true").status_code == 204
    services.review_approve(
        request=pending, reviewer=reviewer, comment="fine", evidence_sha256=pending.evidence_sha256
    )
    response = client.get(url, HTTP_HX_REQUEST="true")
    assert response.status_code == 403
    assert "fine" not in response.content.decode()


def test_an_etag_revalidation_answers_304(client, requester, pending):
    client.force_login(requester)
    response = client.get(f"/requests/{pending.pk}/status/", HTTP_IF_NONE_MATCH=f'"{_seen(pending)}"')
    assert response.status_code == 304


def test_an_approval_elsewhere_reaches_the_requesters_page(client, requester, reviewer, pending):
    client.force_login(requester)
    seen = _seen(pending)
    services.review_approve(
        request=pending, reviewer=reviewer, comment="fine", evidence_sha256=pending.evidence_sha256
    )
    response = _poll(client, pending, seen)
    body = response.content.decode()
    assert response.status_code == 200
    assert 'id="request-panel"' in body and "fine" in body and "1 of 2" in body
    assert response["ETag"] == f'"{_seen(pending)}"' != f'"{seen}"'


def test_a_cancel_reaches_the_page_and_stops_the_polling(client, requester, reviewer, pending):
    client.force_login(reviewer)
    seen = _seen(pending)
    services.request_cancel(request=pending, user=requester)
    response = _poll(client, pending, seen)
    assert response.status_code == 286  # htmx: stop polling
    assert "Cancelled" in response.content.decode()
    assert "hx-trigger" not in response.content.decode()


def test_stale_approvals_reach_the_page(client, requester, reviewer, pending):
    client.force_login(requester)
    services.review_approve(
        request=pending, reviewer=reviewer, comment="ok", evidence_sha256=pending.evidence_sha256
    )
    seen = _seen(pending)
    version_row = pending.version
    version_row.metrics = {"accuracy": 0.5}
    version_row.save()
    assert services.requests_refresh_evidence(version_ids={version_row.pk}) == 1
    response = _poll(client, pending, seen)
    assert response.status_code == 200 and "stale" in response.content.decode()


def test_the_poll_refuses_a_user_without_a_role(client, outsider, pending):
    client.force_login(outsider)
    response = _poll(client, pending, "x")
    assert response.status_code == 403
    assert "Q3" not in response.content.decode()


def test_a_signed_out_poll_without_a_key_is_sent_to_sign_in(client, pending):
    response = _poll(client, pending, "x")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_poll_of_a_missing_request_is_404(client, requester):
    client.force_login(requester)
    assert _poll(client, PromotionRequest(pk=999999), "x").status_code == 404
