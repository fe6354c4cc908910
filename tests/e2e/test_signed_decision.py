"""A signed approval in a real browser: a wrong password is refused beside the field (htmx swaps
the 422), the right one signs, and the page shows who signed, when and what it means."""

import pytest
from playwright.sync_api import expect

from promotions.models import AuditEvent, Review
from tests.factories import request_on_signing_stage

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def signed_request(requester):
    return request_on_signing_stage(requester)


def test_a_reviewer_signs_an_approval_after_one_wrong_password(
    sign_in, live_server, signed_request, reviewer
):
    page = sign_in(reviewer.username)
    page.goto(f"{live_server.url}/requests/{signed_request.pk}/")
    page.get_by_label("Meaning of your signature").select_option("Approved for release")
    page.get_by_label("Password").fill("not-my-password")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#id_password_error")).to_contain_text("Wrong password: nothing was signed.")
    assert not Review.objects.exists()
    assert AuditEvent.objects.filter(action="signature.refused", request_id=signed_request.pk).exists()

    # The refused form was used up: the panel that came back carries a fresh one.
    page.get_by_label("Meaning of your signature").select_option("Approved for release")
    page.get_by_label("Password").fill(f"pw-{reviewer.username}")
    page.get_by_role("button", name="Approve").click()
    line = page.locator("[data-signature]")
    expect(line).to_contain_text(f"Signed by {reviewer.get_full_name()} ({reviewer.username})")
    expect(line).to_contain_text("UTC · Approved for release")
    review = Review.objects.get()
    assert (review.signer_username, review.signed_meaning) == (reviewer.username, "Approved for release")
