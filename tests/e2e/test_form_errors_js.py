"""With JavaScript on, a refused form shows why next to what was refused (htmx swaps 4xx
answers), and Reject asks first."""

import pytest
from playwright.sync_api import expect

from promotions import services
from promotions.models import PromotionRequest

pytestmark = pytest.mark.e2e


def test_a_duplicate_filed_with_javascript_on_shows_the_reason_in_the_form(
    sign_in, live_server, staged_model, requester
):
    first = services.promotion_request_file(
        model_name=staged_model,
        version=2,
        stage_name="Production",
        requested_by=requester,
        justification="1st",
    )
    page = sign_in("riley")
    page.goto(f"{live_server.url}/requests/new/?model={staged_model}&version=2&stage=Production")
    page.get_by_label("Justification").fill("Once more.")
    page.get_by_role("button", name="Request promotion").click()
    alert = page.locator("#request-form [role=alert]")
    expect(alert).to_contain_text(f"already exists (#{first.pk})")
    # What was typed stays, and nothing was filed.
    expect(page.get_by_label("Justification")).to_have_value("Once more.")
    assert PromotionRequest.objects.count() == 1


def test_a_whitespace_justification_with_javascript_on_is_refused_next_to_the_field(
    sign_in, live_server, staged_model, requester
):
    page = sign_in("riley")
    page.goto(f"{live_server.url}/requests/new/?model={staged_model}&version=2&stage=Production")
    # The browser's own `required` check passes a blank of spaces; the server refuses it.
    page.get_by_label("Justification").fill("   ")
    page.get_by_role("button", name="Request promotion").click()
    expect(page.locator("#request-form .errorlist")).to_contain_text("justification")
    assert not PromotionRequest.objects.exists()


def test_reject_asks_first_and_a_dismissed_question_decides_nothing(
    sign_in, live_server, staged_model, requester, reviewer
):
    promotion = services.promotion_request_file(
        model_name=staged_model,
        version=2,
        stage_name="Production",
        requested_by=requester,
        justification="Q3",
    )
    page = sign_in("rex")
    page.goto(f"{live_server.url}/requests/{promotion.pk}/")
    page.get_by_label("Comment").fill("Not this one.")
    questions = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    page.get_by_role("button", name="Reject").click()
    expect(page.get_by_role("button", name="Reject")).to_be_enabled()
    assert questions and "Reject this request?" in questions[0]
    promotion.refresh_from_db()
    assert promotion.status == PromotionRequest.Status.PENDING
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Reject").click()
    expect(page.locator("#request-status")).to_have_text("Rejected")
