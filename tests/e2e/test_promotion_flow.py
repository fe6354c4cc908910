"""A promotion from request to MLflow, in a real browser, with a real worker and MLflow."""

import re

import pytest
from playwright.sync_api import expect

from promotions.models import PromotionRequest
from tests.e2e.conftest import screenshot

pytestmark = pytest.mark.e2e


def test_request_review_and_apply(
    sign_in, live_server, registry, staged_model, requester, reviewer, reviewer2, celery_worker
):
    name = staged_model
    # The requester files the request; the version and stage lists narrow as they choose.
    riley = sign_in("riley")
    riley.goto(f"{live_server.url}/requests/new/")
    riley.get_by_label("Model").select_option(name)
    expect(riley.get_by_label("Version")).to_contain_text("v2 — Staging")
    riley.get_by_label("Version").select_option("2")
    # only the moves the catalog allows from Staging remain
    expect(riley.get_by_label("Target stage")).not_to_contain_text("Staging")
    expect(riley.get_by_label("Target stage")).to_contain_text("Production")
    riley.get_by_label("Target stage").select_option("Production")
    expect(riley.get_by_text("Checks for Production")).to_be_visible()
    riley.get_by_label("Justification").fill("Retrained on Q3 data; +3 pt accuracy on the holdout.")
    riley.get_by_role("button", name="Request promotion").click()
    expect(riley).to_have_url(re.compile(r".*/requests/\d+/$"))
    expect(riley.locator("#request-status")).to_have_text("Pending")
    request = PromotionRequest.objects.get(version__model__name=name)

    # The requester sees no Approve button, and a forged POST is refused.
    expect(riley.get_by_role("button", name="Approve")).to_have_count(0)
    expect(riley.get_by_role("button", name="Cancel request")).to_be_visible()
    token = riley.locator("body").get_attribute("hx-headers").split('"')[3]
    forged = riley.request.post(
        f"{live_server.url}/requests/{request.pk}/decide/",
        form={"decision": "approve", "comment": "mine"},
        headers={"X-CSRFToken": token},
    )
    assert forged.status == 403

    # The first reviewer approves in place.
    rex = sign_in("rex")
    screenshot(rex, "queue")
    rex.set_viewport_size({"width": 390, "height": 844})
    screenshot(rex, "queue-phone")
    rex.set_viewport_size({"width": 1280, "height": 900})
    rex.get_by_role("link", name=name).click()
    expect(rex.get_by_text("Compared with the version in Production now (v1)")).to_be_visible()
    rex.get_by_label("Comment").fill("Metrics fine.")
    rex.get_by_role("button", name="Approve").click()
    expect(rex.get_by_text("Decision (1 of 2 approvals)")).to_be_visible()
    expect(rex.locator("#request-status")).to_have_text("Pending")

    # The second reviewer first tries to reject without a comment, then approves.
    rita = sign_in("rita")
    rita.goto(f"{live_server.url}/requests/{request.pk}/")
    rita.once("dialog", lambda dialog: dialog.accept())  # Reject asks first
    rita.get_by_role("button", name="Reject").click()
    expect(rita.get_by_role("alert")).to_contain_text("A rejection needs a comment")
    rita.get_by_role("button", name="Approve").dblclick()
    # Approved → Applying → Applied, without a reload.
    expect(rita.locator("#request-status")).to_have_text(re.compile("Approved|Applying|Applied"))
    expect(rita.locator("#request-status")).to_have_text("Applied", timeout=90_000)
    screenshot(rita, "request")
    assert request.reviews.count() == 2  # the double click recorded one approval

    client = registry.client()
    assert client.get_model_version(name, "2").current_stage == "Production"
    assert client.get_model_version(name, "1").current_stage == "Archived"

    rita.goto(f"{live_server.url}/models/{name}/")
    expect(rita.get_by_text("Stage history")).to_be_visible()
    screenshot(rita, "model")


def focus_on(page, element_id: str, *, after: str) -> None:
    """Press a key, then wait until focus is on the element and htmx has settled.

    htmx moves focus to the swapped-in element at once, but binds its triggers only when the
    swap settles (htmx.config.defaultSettleDelay later, with the htmx-added class removed): a
    key pressed before that changes the value without sending the request.
    """
    page.keyboard.press(after)
    # A function, not an expression: Playwright evaluates a bare expression with eval, which
    # the page's Content-Security-Policy refuses.
    page.wait_for_function(
        """(id) => document.activeElement && document.activeElement.id === id
            && !document.querySelector('.htmx-added, .htmx-settling, .htmx-request')""",
        arg=element_id,
    )


def test_the_request_form_works_with_the_keyboard_alone(sign_in, live_server, staged_model, requester):
    page = sign_in("riley")
    page.goto(f"{live_server.url}/requests/new/")
    # Tab from the page's start to the Model field, then only the keyboard.
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "id_model":
            break
    assert page.evaluate("document.activeElement.id") == "id_model"
    page.keyboard.press("ArrowDown")  # the only model in this test's registry
    expect(page.get_by_label("Version")).to_contain_text("v2 — Staging")
    assert page.evaluate("document.activeElement.id") == "id_model"  # focus survives the swap
    focus_on(page, "id_version", after="Tab")
    page.keyboard.press("ArrowDown")  # newest version first: v2
    expect(page.get_by_label("Version")).to_have_value("2", timeout=20_000)
    expect(page.get_by_label("Target stage")).not_to_contain_text("Staging", timeout=20_000)
    focus_on(page, "id_stage", after="Tab")
    page.keyboard.press("ArrowDown")  # first allowed stage in catalog order: Production
    expect(page.get_by_label("Target stage")).to_have_value("Production", timeout=20_000)
    expect(page.get_by_text("Checks for Production")).to_be_visible(timeout=20_000)
    page.keyboard.press("Tab")
    page.keyboard.type("Keyboard only.")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent").strip() == "Request promotion"
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r".*/requests/\d+/$"))
    expect(page.locator("#request-status")).to_have_text("Pending")
    request = PromotionRequest.objects.get()
    assert (request.version.version, request.stage.name, request.justification) == (
        2,
        "Production",
        "Keyboard only.",
    )
