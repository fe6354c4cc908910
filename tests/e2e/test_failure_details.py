"""A failed request's raw error, a long unbroken urllib3 message, wraps inside its Details block:
at 390 px the page never becomes wider than the screen. A retrying one counts down to its next try."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from promotions import services
from promotions.models import PromotionRequest
from tests.factories import mirror_model, stage, version

pytestmark = pytest.mark.e2e

REASON = "MLflow unreachable after 5 attempts: MLflow at http://mlflow.internal:5000 is not answering."
RAW = (
    "API request to http://mlflow.internal:5000/api/2.0/mlflow/model-versions/get?name=sales_forecast"
    "&version=5 failed with exception HTTPConnectionPool(host='mlflow.internal',port=5000):Max_retries_"
    "exceeded_with_url:/api/2.0/mlflow/model-versions/get?name=sales_forecast&version=5(Caused_by_"
    "NewConnectionError('<urllib3.connection.HTTPConnection_object_at_0x7f1e2c3b4d50>:Failed_to_"
    "establish_a_new_connection:[Errno_111]_Connection_refused'))" + "x" * 200
)


def filed(requester, **state):
    sales = mirror_model(
        "sales_forecast", {3: {"current_stage": "Production"}, 5: {"current_stage": "Staging"}}
    )
    promotion = services.promotion_request_create(
        version=version(sales, 5), stage=stage("Production"), requested_by=requester, justification="Q3"
    )
    PromotionRequest.objects.filter(pk=promotion.pk).update(**state)
    return promotion


@pytest.fixture
def failed(requester):
    return filed(
        requester, status=PromotionRequest.Status.FAILED, attempts=5, last_error=REASON, last_error_detail=RAW
    )


def test_at_390_px_the_details_of_a_failure_wrap_inside_the_screen(sign_in, live_server, failed):
    page = sign_in("riley")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server.url}/requests/{failed.pk}/")
    expect(page.get_by_text(f"Failed: {REASON}")).to_be_visible()
    details = page.locator("details.error-detail")
    expect(details.locator("pre")).not_to_be_visible()  # collapsed until asked for

    details.locator("summary").click()

    expect(details.locator("pre")).to_be_visible()
    expect(details.locator("pre")).to_contain_text("Connection_refused")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_the_retry_line_counts_down_to_the_next_try(sign_in, live_server, requester, settings):
    settings.PROMOTION_MAX_ATTEMPTS = 5
    retrying = filed(
        requester,
        status=PromotionRequest.Status.APPROVED,
        attempts=2,
        last_error="MLflow at http://mlflow.internal:5000 is not answering.",
        enqueued_at=timezone.now() + timedelta(seconds=4),
    )
    page = sign_in("riley")
    page.goto(f"{live_server.url}/requests/{retrying.pk}/")
    line = page.locator("[data-apply-retry]")
    expect(line).to_contain_text(
        re.compile(r"Retrying: attempt 2 of 5, next try in about [1-4] s — MLflow at")
    )

    expect(line).to_contain_text("next try now — MLflow at", timeout=8_000)
