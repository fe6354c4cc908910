"""The queue in a phone-sized browser: rows as cards, the bulk box, Reject's question, focus."""

import pytest
from playwright.sync_api import expect

from promotions.models import Review
from tests.factories import mirror_model
from tests.test_queue_inbox import file


@pytest.fixture
def queue_models():
    return mirror_model(
        "sales_forecast", {3: {"current_stage": "Production"}, 5: {"current_stage": "Staging"}}
    )


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_at_390_px_rows_are_cards_and_the_bulk_box_waits_for_a_selection(
    browser, live_server, queue_models, requester, reviewer
):
    file(queue_models, requester, 5)
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto(f"{live_server.url}/accounts/login/")
        page.get_by_label("User name").fill("rex")
        page.get_by_label("Password").fill("pw-rex")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("button", name="Log out")).to_be_visible()
        page.goto(f"{live_server.url}/?tab=mine")
        status = page.locator('td[data-label="Status"]').first
        expect(status).to_be_visible()
        box = status.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390  # on screen, not scrolled off
        bulk = page.locator("[data-bulk-box]")
        expect(bulk).to_be_hidden()
        page.get_by_label("Select request").first.check()
        expect(bulk).to_be_visible()
        # Reject asks first; dismissing the question decides nothing (the comment a rejection
        # needs is there, so only the question stands in the way).
        page.get_by_label("Comment").fill("not now")
        page.once("dialog", lambda dialog: dialog.dismiss())
        page.get_by_role("button", name="Reject selected").click()
        expect(bulk).to_be_visible()
        assert not Review.objects.exists()
        # A filter swaps the rows; focus lands on them.
        page.get_by_label("Model").fill("sales")
        expect(page.locator("#queue-rows")).to_be_focused()
    finally:
        context.close()
