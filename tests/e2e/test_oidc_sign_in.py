"""Company sign-in in a real browser, through the provider's own page: a reviewer signs in with
the provider, then signs an approval by signing in there again."""

import pytest
from playwright.sync_api import expect

from promotions import services
from promotions.models import Review
from tests.factories import mirror_model, stage, version

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def authorize_at_provider(page, sub: str) -> None:
    expect(page.get_by_role("heading", name="Authorize Client")).to_be_visible()
    page.locator('input[name="sub"]').fill(sub)
    page.get_by_role("button", name="Authorize").click()


def test_a_reviewer_signs_in_and_signs_through_the_provider(browser, live_server, sso, requester):
    production = stage("Production")
    production.signature_required = True
    production.save()
    sales = mirror_model(
        "sales_forecast",
        {3: {"current_stage": "Production"}, 5: {"current_stage": "Staging", "metrics": {"accuracy": 0.93}}},
    )
    promotion = services.promotion_request_create(
        version=version(sales, 5), stage=production, requested_by=requester, justification="beats v3"
    )
    sso.set_user("sub-rae", preferred_username="rae", name="Rae Viewer", groups=["ml-reviewers"])
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto(f"{live_server.url}/accounts/login/")
        page.get_by_role("link", name="Sign in with Acme SSO").click()
        authorize_at_provider(page, "sub-rae")
        expect(page.get_by_role("button", name="Log out")).to_be_visible()
        expect(page.get_by_text("rae (Reviewers)")).to_be_visible()

        page.goto(f"{live_server.url}/requests/{promotion.pk}/")
        expect(page.get_by_text("You sign by signing in again at Acme SSO")).to_be_visible()
        page.get_by_label("Meaning of your signature").select_option("Approved for release")
        page.get_by_label("Comment").fill("metrics fine")
        page.get_by_role("button", name="Approve").click()
        authorize_at_provider(page, "sub-rae")
        page.get_by_role("button", name="Sign and approve").click()
        expect(page.locator("[data-signature]")).to_contain_text("Rae Viewer")
    finally:
        context.close()
    review = Review.objects.get(request=promotion)
    assert (review.signer_username, review.signed_meaning) == ("rae", "Approved for release")
