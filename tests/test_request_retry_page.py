"""While an apply retries, the request panel says so in a sentence; a failed request shows its
reason as a sentence and the raw text in a collapsed Details block."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from promotions import selectors, services, tokens
from promotions.models import PromotionRequest
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status
REASON = "MLflow at http://mlflow.internal:5000 is not answering."
RAW = (
    "API request to http://mlflow.internal:5000/api/2.0/mlflow/model-versions/get failed with exception "
    "HTTPConnectionPool(host='mlflow.internal', port=5000): <b>Max retries</b> exceeded"
)


@pytest.fixture
def promotion(requester):
    sales = mirror_model(
        "sales_forecast", {3: {"current_stage": "Production"}, 5: {"current_stage": "Staging"}}
    )
    return services.promotion_request_create(
        version=version(sales, 5), stage=stage("Production"), requested_by=requester, justification="Q3"
    )


def set_state(promotion, **fields):
    PromotionRequest.objects.filter(pk=promotion.pk).update(**fields)


def panel(client, promotion) -> str:
    return client.get(f"/requests/{promotion.pk}/").content.decode()


def test_a_scheduled_retry_says_the_attempt_the_wait_and_why(client, requester, promotion, settings):
    settings.PROMOTION_MAX_ATTEMPTS = 5
    set_state(
        promotion,
        status=Status.APPROVED,
        attempts=3,
        last_error=REASON,
        enqueued_at=timezone.now() + timedelta(seconds=8.4),
    )
    client.force_login(requester)

    body = panel(client, promotion)

    assert "Retrying: attempt 3 of 5, next try <time" in body
    assert 'data-countdown="8">in about 8 s</time> — ' + REASON in body
    assert "Approved and queued" not in body


def test_a_retry_that_is_due_says_now(client, requester, promotion, settings):
    settings.PROMOTION_MAX_ATTEMPTS = 5
    set_state(
        promotion,
        status=Status.APPROVED,
        attempts=1,
        last_error=REASON,
        enqueued_at=timezone.now() - timedelta(1),
    )
    client.force_login(requester)

    assert f"Retrying: attempt 1 of 5, next try now — {REASON}" in panel(client, promotion)


def test_while_the_retry_runs_it_says_so(client, requester, promotion, settings):
    settings.PROMOTION_MAX_ATTEMPTS = 5
    set_state(promotion, status=Status.APPLYING, attempts=2, last_error=REASON, enqueued_at=timezone.now())
    client.force_login(requester)

    assert f"Retrying: attempt 2 of 5, trying now — {REASON}" in panel(client, promotion)


def test_a_reopened_request_approved_again_is_not_retrying(client, requester, reviewer, reviewer2, promotion):
    # An apply attempt reopened it (an approver left): attempts made, a reason, back to pending.
    set_state(promotion, attempts=1, last_error="1 of the 2 approvals needed still count")
    for who in (reviewer, reviewer2):
        promotion = services.review_approve(request=promotion, reviewer=who)
    assert promotion.status == Status.APPROVED and promotion.attempts == 1
    client.force_login(requester)

    body = panel(client, promotion)

    assert "Retrying" not in body and "still count" not in body


def test_an_approved_request_never_tried_shows_no_retry(client, requester, promotion):
    set_state(promotion, status=Status.APPROVED, enqueued_at=timezone.now())
    client.force_login(requester)

    assert "Retrying" not in panel(client, promotion)


def test_a_failed_request_shows_the_sentence_and_the_raw_text_escaped_in_details(
    client, requester, promotion
):
    set_state(promotion, status=Status.FAILED, attempts=3, last_error=REASON, last_error_detail=RAW)
    client.force_login(requester)

    body = panel(client, promotion)

    assert f"<p>Failed: {REASON}</p>" in body
    assert '<details class="error-detail"><summary>Details</summary><pre>API request to' in body
    assert "&lt;b&gt;Max retries&lt;/b&gt; exceeded</pre></details>" in body
    assert "<b>Max retries" not in body
    assert "Retrying" not in body


def test_scheduling_a_retry_reaches_an_open_page_through_the_poll(client, requester, promotion):
    set_state(promotion, status=Status.APPROVED, attempts=1, last_error=REASON, enqueued_at=timezone.now())
    client.force_login(requester)
    seen = selectors.request_seen(promotion.pk)

    services.apply_retry_scheduled(request_id=promotion.pk, delay=6)

    response = client.get(f"/requests/{promotion.pk}/status/", {"seen": seen}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert "Retrying: attempt 1 of" in response.content.decode()
    assert "in about 6 s</time>" in response.content.decode()


def test_the_api_says_when_the_next_attempt_is(requester, promotion):
    next_at = timezone.now() + timedelta(seconds=30)
    set_state(promotion, status=Status.APPROVED, attempts=2, last_error=REASON, enqueued_at=next_at)
    _, raw = tokens.api_token_create(user=requester, name="ci")

    answer = Client(headers={"Authorization": f"Bearer {raw}"}).get(f"/api/requests/{promotion.pk}").json()

    assert (answer["attempts"], answer["last_error"]) == (2, REASON)
    assert answer["next_attempt_at"].startswith(next_at.strftime("%Y-%m-%dT%H:%M:%S"))
