"""Signed decisions: on a stage that requires a signature, a decision needs the password again and
a meaning, is signed over the evidence digest, is shown with the signer's name, time and meaning,
and a form cannot be sent twice."""

import csv
import hashlib
import io
import json
import re

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from promotions import audit, services, tokens
from promotions.audit import signing
from promotions.models import AuditEvent, PromotionRequest, Review, SignatureNonce
from tests.factories import mirror_model, stage, version
from tests.tampering import tamper, tampering_db

pytestmark = pytest.mark.django_db
Status = PromotionRequest.Status


@pytest.fixture
def signing_stage():
    production = stage("Production")
    production.signature_required = True
    production.save()
    return production


@pytest.fixture
def pending(requester, signing_stage):
    sales = mirror_model(
        "sales_forecast",
        {3: {"current_stage": "Production"}, 5: {"current_stage": "Staging", "metrics": {"accuracy": 0.93}}},
    )
    return services.promotion_request_create(
        version=version(sales, 5), stage=signing_stage, requested_by=requester, justification="beats v3"
    )


def form_fields(client, promotion) -> dict:
    """The decision form's hidden fields as the page draws them."""
    html = client.get(f"/requests/{promotion.pk}/").content.decode()
    return {
        name: re.search(rf'name="{name}" value="([^"]*)"', html).group(1)
        for name in ("signature_token", "evidence_sha256")
    }


def decide(client, promotion, *, fields=None, htmx=True, **data):
    body = {"decision": "approve", "comment": "fine", **(fields or form_fields(client, promotion)), **data}
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    return client.post(f"/requests/{promotion.pk}/decide/", body, **headers)


def test_the_form_asks_for_the_password_and_the_meaning(client, reviewer, pending):
    client.force_login(reviewer)
    html = client.get(f"/requests/{pending.pk}/").content.decode()
    assert 'autocomplete="current-password"' in html
    for meaning in ("Approved for release", "Reviewed — technical", "Reviewed — quality"):
        assert f'<option value="{meaning}"' in html


def test_the_form_of_a_stage_without_signatures_asks_for_neither(client, reviewer, pending, signing_stage):
    signing_stage.signature_required = False
    signing_stage.save()
    client.force_login(reviewer)
    html = client.get(f"/requests/{pending.pk}/").content.decode()
    assert 'name="password"' not in html and 'name="signature_token"' not in html


def test_the_right_password_and_a_meaning_sign_the_approval(client, reviewer, pending, settings):
    settings.AUDIT_SIGNING_KEY = "k" * 40
    client.force_login(reviewer)
    response = decide(client, pending, password="pw-rex", meaning="Reviewed — technical")
    assert response.status_code == 200, response.content.decode()[:500]
    review = Review.objects.get(request=pending)
    assert (review.signer_username, review.signer_name, review.signed_meaning) == (
        "rex",
        "Rex Tester",
        "Reviewed — technical",
    )
    assert review.signed_digest == pending.evidence_sha256
    assert len(review.signature_seal) == 64
    stamp = review.signed_at.strftime("%Y-%m-%d %H:%M:%S")
    line = f"Signed by Rex Tester (rex) · {stamp} UTC · Reviewed — technical"
    assert line in client.get(f"/requests/{pending.pk}/").content.decode()
    event = AuditEvent.objects.get(action="review.approved", request_id=pending.pk)
    assert event.details["signature"] == {
        "name": "Rex Tester",
        "username": "rex",
        "signed_at": review.signed_at.isoformat(timespec="microseconds"),
        "meaning": "Reviewed — technical",
        "digest": pending.evidence_sha256,
        "key_id": settings.AUDIT_SIGNING_KEY_ID,
        "seal": review.signature_seal,
    }


def test_a_wrong_password_refuses_the_decision_beside_the_field_and_is_audited(client, reviewer, pending):
    client.force_login(reviewer)
    for htmx in (True, False):
        response = decide(client, pending, htmx=htmx, password="wrong", meaning="Approved for release")
        assert response.status_code == 422
        html = response.content.decode()
        assert re.search(r'id="id_password_error"[^>]*>Wrong password: nothing was signed', html)
    assert not Review.objects.filter(request=pending).exists()
    assert AuditEvent.objects.filter(action="signature.refused", request_id=pending.pk).count() == 2
    assert AuditEvent.objects.filter(action="auth.login_failed").exists()


def test_wrong_passwords_lock_the_account_as_failed_sign_ins_do(client, reviewer, pending, settings):
    client.force_login(reviewer)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        decide(client, pending, password="wrong", meaning="Approved for release")
    assert AuditEvent.objects.filter(action="auth.locked_out").exists()
    # Locked: the right password signs nothing (axes answers 429, as on the sign-in page), and
    # the sign-in page refuses it too.
    response = decide(client, pending, password="pw-rex", meaning="Approved for release")
    assert response.status_code == 429
    assert not Review.objects.filter(request=pending).exists()
    signed_in = Client().post("/accounts/login/", {"username": "rex", "password": "pw-rex"})
    assert signed_in.status_code != 302


@pytest.mark.parametrize(
    ("meaning", "message"),
    [
        ("", "Choose what your signature means."),
        ("Approved by the CEO", "is not a meaning this stage offers"),
    ],
)
def test_a_missing_or_forged_meaning_is_refused(client, reviewer, pending, meaning, message):
    client.force_login(reviewer)
    response = decide(client, pending, password="pw-rex", meaning=meaning)
    assert response.status_code == 422
    assert re.search(r'id="id_meaning_error"[^>]*>[^<]*' + re.escape(message), response.content.decode())
    assert not Review.objects.filter(request=pending).exists()


def test_the_stage_lists_its_own_meanings(client, reviewer, pending, signing_stage):
    signing_stage.signature_meanings = ["Released by QA"]
    signing_stage.save()
    client.force_login(reviewer)
    assert decide(client, pending, password="pw-rex", meaning="Approved for release").status_code == 422
    assert decide(client, pending, password="pw-rex", meaning="Released by QA").status_code == 200
    assert Review.objects.get(request=pending).signed_meaning == "Released by QA"


def test_a_replayed_signed_form_is_refused(client, reviewer, reviewer2, pending, signing_stage):
    signing_stage.required_approvals = 2
    signing_stage.save()
    client.force_login(reviewer)
    fields = form_fields(client, pending)
    assert (
        decide(client, pending, fields=fields, password="pw-rex", meaning="Approved for release").status_code
        == 200
    )
    # The same POST again, after the review went stale: refused as used, nothing signed twice.
    Review.objects.filter(request=pending).update(stale=True, stale_reason="evidence changed")
    again = decide(client, pending, fields=fields, password="pw-rex", meaning="Approved for release")
    assert again.status_code == 422
    assert "already sent once" in again.content.decode()
    assert Review.objects.filter(request=pending).count() == 1


def test_an_old_signed_form_is_refused(client, reviewer, pending, settings, monkeypatch):
    client.force_login(reviewer)
    fields = form_fields(client, pending)
    monkeypatch.setattr("django.core.signing.time.time", lambda: 10**10)
    response = decide(client, pending, fields=fields, password="pw-rex", meaning="Approved for release")
    assert response.status_code == 422
    assert "too old" in response.content.decode()
    assert not Review.objects.filter(request=pending).exists()


def test_a_form_issued_to_another_reviewer_is_refused(client, reviewer, reviewer2, pending):
    client.force_login(reviewer2)
    fields = form_fields(client, pending)
    client.force_login(reviewer)
    response = decide(client, pending, fields=fields, password="pw-rex", meaning="Approved for release")
    assert response.status_code == 422
    assert "not issued to you" in response.content.decode()
    assert SignatureNonce.objects.count() == 0


def test_a_rejection_signs_as_rejected(client, reviewer, pending):
    client.force_login(reviewer)
    response = decide(
        client, pending, decision="reject", comment="no", password="pw-rex", meaning="Approved for release"
    )
    assert response.status_code == 200
    review = Review.objects.get(request=pending)
    assert (review.decision, review.signed_meaning) == ("reject", "Rejected")
    event = AuditEvent.objects.get(action="review.rejected", request_id=pending.pk)
    assert event.details["signature"]["meaning"] == "Rejected"
    assert PromotionRequest.objects.get(pk=pending.pk).status == Status.REJECTED


def test_a_decision_without_the_signature_fields_is_refused(client, reviewer, pending):
    client.force_login(reviewer)
    response = client.post(f"/requests/{pending.pk}/decide/", {"decision": "approve"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert not Review.objects.filter(request=pending).exists()


def test_the_service_refuses_an_unsigned_decision(reviewer, pending):
    with pytest.raises(services.decisions.SignatureRequired):
        services.review_approve(request=pending, reviewer=reviewer, evidence_sha256=pending.evidence_sha256)
    assert AuditEvent.objects.filter(action="auth.denied", request_id=pending.pk).exists()


def test_the_api_refuses_decisions_on_a_signing_stage(reviewer, pending):
    _, raw = tokens.api_token_create(user=reviewer, name="ci")
    api = Client(headers={"Authorization": f"Bearer {raw}"})
    for action, body in (("approve", "{}"), ("reject", '{"comment": "no"}')):
        response = api.post(f"/api/requests/{pending.pk}/{action}", body, content_type="application/json")
        assert response.status_code == 403
        assert response.json()["code"] == "signature_required"
        assert f"/requests/{pending.pk}/" in response.json()["message"]
    assert not Review.objects.filter(request=pending).exists()


def test_the_api_shows_the_signature(client, reviewer, auditor, pending):
    client.force_login(reviewer)
    decide(client, pending, password="pw-rex", meaning="Approved for release")
    review = Review.objects.get(request=pending)
    _, raw = tokens.api_token_create(user=reviewer, name="ci")
    api = Client(headers={"Authorization": f"Bearer {raw}"})
    [shown] = api.get(f"/api/requests/{pending.pk}").json()["reviews"]
    assert shown["signature"]["name"] == "Rex Tester"
    assert shown["signature"]["username"] == "rex"
    assert shown["signature"]["meaning"] == "Approved for release"
    assert shown["signature"]["digest"] == pending.evidence_sha256
    assert shown["signature"]["signed_at"].startswith(review.signed_at.strftime("%Y-%m-%dT%H:%M:%S"))


# --- verify_audit_log -------------------------------------------------------------------------


def verify_command() -> str:
    try:
        call_command("verify_audit_log", stdout=io.StringIO(), stderr=io.StringIO())
    except CommandError as exc:
        assert exc.returncode == 1
        return str(exc)
    return ""


@pytest.fixture
def signed(client, reviewer, pending, settings):
    settings.AUDIT_SIGNING_KEY, settings.AUDIT_SIGNING_KEY_ID = "k" * 40, "key-2026"
    client.force_login(reviewer)
    assert decide(client, pending, password="pw-rex", meaning="Approved for release").status_code == 200
    return Review.objects.get(request=pending)


def test_verify_accepts_intact_signatures(signed):
    assert verify_command() == ""


def test_verify_names_a_review_whose_signed_digest_was_edited(signed, pending):
    # The reviews table has no append-only trigger: an edit there breaks no hash.
    Review.objects.filter(pk=signed.pk).update(signed_digest="f" * 64)
    message = verify_command()
    event = AuditEvent.objects.get(action="review.approved", request_id=pending.pk)
    assert (
        f"signature of entry #{event.sequence}, request #{pending.pk}, by Rex Tester (rex): the review's "
        "record differs from the audit entry in digest" in message
    )


@tampering_db
def test_verify_names_a_signature_whose_digest_is_not_the_requests(signed, pending):
    event = AuditEvent.objects.get(action="review.approved", request_id=pending.pk)
    details = {**event.details, "signature": {**event.details["signature"], "digest": "e" * 64}}
    tamper("UPDATE promotions_auditevent SET details = %s WHERE id = %s", [json.dumps(details), event.pk])
    tamper("UPDATE promotions_review SET signed_digest = %s WHERE id = %s", ["e" * 64, signed.pk])
    message = verify_command()
    # The chain names the edited entry; the signature is named with what it signed and what the
    # record held, and its seal no longer checks.
    assert f"broken at entry #{event.sequence}" in message
    who = (
        f"Signature broken: signature of entry #{event.sequence}, request #{pending.pk}, by Rex Tester (rex)"
    )
    assert (
        f"{who}: it signed digest {'e' * 64}, but the request's evidence digest on the record then was "
        f"{pending.evidence_sha256}." in message
    )
    assert f"{who}: its seal: the MAC does not match" in message


def test_a_signature_made_before_an_evidence_change_still_matches(signed, pending):
    audit.record(
        action="request.evidence_changed",
        meaning="evidence changed",
        request_id=pending.pk,
        details={"old_sha256": signed.signed_digest, "new_sha256": "d" * 64},
    )
    assert audit.signature_problems() == []


def test_verify_names_a_seal_made_without_the_key(signed, pending, settings):
    # The same key id, another secret: a seal forged without the key does not check.
    settings.AUDIT_SIGNING_KEY = "another key, not the one that sealed" * 2
    [problem] = [p for p in audit.signature_problems() if "seal" in p]
    assert f"request #{pending.pk}, by Rex Tester (rex): its seal" in problem


# --- exports ----------------------------------------------------------------------------------


def export_file(tmp_path, fmt: str):
    path = tmp_path / f"log.{fmt}"
    call_command("export_audit_log", "--format", fmt, "-o", str(path), stdout=io.StringIO())
    return path


def verify_file(path) -> str:
    try:
        call_command("verify_audit_log", "--export", str(path), stdout=io.StringIO())
    except CommandError as exc:
        return str(exc)
    return ""


def test_every_export_carries_the_signature_as_columns(signed, tmp_path):
    expected = {
        "signature_name": "Rex Tester",
        "signature_username": "rex",
        "signature_time": signed.signed_at.isoformat(timespec="microseconds"),
        "signature_meaning": "Approved for release",
        "signature_digest": signed.signed_digest,
    }
    rows = list(csv.DictReader(io.StringIO(export_file(tmp_path, "csv").read_text(), newline="")))
    lines = [json.loads(line) for line in export_file(tmp_path, "jsonl").read_text().splitlines()]
    for exported in (rows, lines):
        [approval] = [r for r in exported if r["action"] == "review.approved"]
        assert {name: approval[name] for name in expected} == expected
        unsigned = next(r for r in exported if r["action"] == "request.created")
        assert all(unsigned[name] == "" for name in expected)
    assert verify_file(tmp_path / "log.csv") == verify_file(tmp_path / "log.jsonl") == ""


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_export_whose_signature_columns_were_edited_fails_verification(signed, tmp_path, fmt):
    path = export_file(tmp_path, fmt)
    text = path.read_text()
    assert text.count("Approved for release") == 2  # in details and in its column
    # Only the column changed (the last occurrence on the line), details left as it was.
    head, _, tail = text.rpartition("Approved for release")
    path.write_text(head + "Reviewed — quality" + tail)
    manifest = tmp_path / f"log.{fmt}.manifest.json"
    content = json.loads(manifest.read_text())
    content["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    content.pop("signature", None)
    # Re-signed, as someone holding the key could: only the row's own check is left to catch it.
    manifest.write_text(json.dumps(signing.sign_manifest(content)))
    event = AuditEvent.objects.get(action="review.approved")
    message = verify_file(path)
    assert f"#{event.sequence}" in message
    assert "its signature columns do not say what its details record" in message


def test_the_audit_page_shows_the_signature_with_its_entry(client, signed, auditor):
    client.force_login(auditor)
    html = client.get("/audit/").content.decode()
    stamp = signed.signed_at.strftime("%Y-%m-%d %H:%M:%S")
    assert f"Signed by Rex Tester (rex) · {stamp} UTC · Approved for release" in html


# --- hostile input ----------------------------------------------------------------------------

FIELDS = ("decision", "comment", "evidence_sha256", "meaning", "password", "signature_token")


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.dictionaries(
        st.sampled_from(FIELDS),
        st.one_of(
            st.sampled_from(["approve", "reject", "", "\x00", "Approved for release", "pw-rex", "x" * 5000]),
            st.text(max_size=60),
        ),
    ),
    htmx=st.booleans(),
    keep_token=st.booleans(),
)
def test_no_hostile_signed_form_gives_a_server_error_or_signs(
    client, reviewer, pending, values, htmx, keep_token
):
    client.force_login(reviewer)
    fields = form_fields(client, pending) if keep_token else {}
    body = {**fields, **values}
    if keep_token and "password" in values:
        body["password"] = "not-" + str(values["password"])  # never the right one
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    response = client.post(f"/requests/{pending.pk}/decide/", body, **headers)
    assert response.status_code < 500
    assert not Review.objects.filter(request=pending).exists()


def test_bulk_approval_cannot_sign_and_refuses_a_signing_stage(client, reviewer, pending):
    client.force_login(reviewer)
    response = client.post(
        "/queue/bulk/",
        {
            "decision": "approve",
            "comment": "all fine",
            "request_ids": [str(pending.pk)],
            f"evidence_{pending.pk}": pending.evidence_sha256,
        },
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 422
    assert "requires a signed decision" in response.content.decode()
    assert not Review.objects.filter(request=pending).exists()


def test_an_account_without_a_password_cannot_sign_and_is_not_counted_as_a_failed_sign_in(
    client, reviewer, pending
):
    reviewer.set_unusable_password()
    reviewer.save()
    client.force_login(reviewer)
    response = decide(client, pending, password="anything", meaning="Approved for release")
    assert response.status_code == 422
    assert "single sign-on" in response.content.decode()
    assert not Review.objects.filter(request=pending).exists()
    assert not AuditEvent.objects.filter(action="auth.login_failed").exists()
    assert AuditEvent.objects.get(action="signature.refused").details["reason"] == "no password to sign with"
