"""With AUDIT_SIGNING_KEY, a log or an export rewritten with recomputed hashes is named as tampered."""

import hashlib
import hmac
import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from promotions import audit, tasks
from promotions.audit import signing
from promotions.audit.format import compute_hash, payload_of
from promotions.models import AuditChainHead, AuditEvent, AuditSeal
from tests.tampering import tamper, tampering_db

pytestmark = tampering_db

KEY = "k" * 40
OLD_KEY = "o" * 40


@pytest.fixture
def signing_key(settings):
    settings.AUDIT_SIGNING_KEY, settings.AUDIT_SIGNING_KEY_ID = KEY, "key-2026"
    settings.AUDIT_SIGNING_KEYS_OLD = {}
    return settings


def entries(n: int) -> list[AuditEvent]:
    return [audit.record(action="registry.drift", meaning=f"entry {i}", details={"i": i}) for i in range(n)]


def verify_command(*args) -> tuple[str, str]:
    """(output, failure message): verify_audit_log's answer ('' for no failure)."""
    out = io.StringIO()
    try:
        call_command("verify_audit_log", *args, stdout=out)
    except CommandError as exc:
        assert exc.returncode == 1
        return out.getvalue(), str(exc)
    return out.getvalue(), ""


def rewrite_from(sequence: int, meaning: str) -> None:
    """What someone who can write the database does: edit an entry, recompute every hash after
    it, and move the chain head to match. Without the key, the seals and head MAC stay as they were."""
    events = list(AuditEvent.objects.filter(sequence__gte=sequence).order_by("sequence"))
    prev_hash = AuditEvent.objects.get(sequence=sequence - 1).hash
    for event in events:
        if event.sequence == sequence:
            event.meaning = meaning
        event.prev_hash = prev_hash
        event.hash = compute_hash(payload_of(event))
        tamper(
            "UPDATE promotions_auditevent SET meaning = %s, prev_hash = %s, hash = %s WHERE sequence = %s",
            [event.meaning, event.prev_hash, event.hash, event.sequence],
        )
        prev_hash = event.hash
    tamper("UPDATE promotions_auditchainhead SET last_hash = %s WHERE id = 1", [prev_hash])


def cut_the_last_entry() -> AuditEvent:
    """Delete the last entry and move the chain head back to the one before: verifies unkeyed."""
    last, before = AuditEvent.objects.order_by("-sequence")[:2]
    tamper("DELETE FROM promotions_auditevent WHERE sequence = %s", [last.sequence])
    tamper(
        "UPDATE promotions_auditchainhead SET last_sequence = %s, last_hash = %s WHERE id = 1",
        [before.sequence, before.hash],
    )
    return last


def test_without_a_key_a_cut_tail_with_a_moved_head_verifies_and_says_it_is_unsigned():
    entries(4)
    cut_the_last_entry()
    out, failure = verify_command()
    assert failure == ""
    assert "Keys: unsigned (no AUDIT_SIGNING_KEY)" in out


def test_a_cut_tail_with_a_moved_head_is_named(signing_key):
    entries(4)
    last = cut_the_last_entry()
    _, failure = verify_command()
    assert (
        f"broken at entry #{last.sequence - 1}: the chain head (entry #{last.sequence - 1}) does not check"
        in failure
    )
    assert "MAC does not match" in failure


def test_a_cut_tail_with_the_old_head_row_restored_is_caught_by_the_seal(signing_key):
    """The strongest quiet cut: the head row (MAC included) put back as it stood one entry ago."""
    entries(3)
    old_head = AuditChainHead.objects.values_list("last_sequence", "last_hash", "key_id", "mac").get()
    last = audit.record(action="registry.drift", meaning="the entry to hide")
    assert audit.seal().sequence == last.sequence  # beat's seal, a few minutes later
    tamper("DELETE FROM promotions_auditevent WHERE sequence = %s", [last.sequence])
    tamper(
        "UPDATE promotions_auditchainhead SET last_sequence = %s, last_hash = %s, key_id = %s, mac = %s",
        list(old_head),
    )
    _, failure = verify_command()
    assert f"broken at entry #{last.sequence}: seal" in failure
    assert f"vouches for entry #{last.sequence}, which no longer exists" in failure


def test_a_rewrite_with_recomputed_hashes_is_named(signing_key):
    events = entries(6)
    audit.seal()
    rewrite_from(events[2].sequence, "edited")
    assert audit.verify_database(parallel=False).ok is False
    _, failure = verify_command()
    assert "does not check" in failure or "was rewritten" in failure


def test_a_rewrite_before_a_seal_names_the_sealed_entry(signing_key, settings):
    settings.AUDIT_SEAL_EVERY = 3
    events = entries(7)
    sealed = list(AuditSeal.objects.order_by("id").values_list("sequence", flat=True))
    assert sealed and all(s % 3 == 0 for s in sealed)  # record() seals every AUDIT_SEAL_EVERY entries
    rewrite_from(events[1].sequence, "edited")
    report = audit.verify_database(parallel=False)
    first_sealed_after = min(s for s in sealed if s >= events[1].sequence)
    assert not report.ok and report.first_bad_sequence == first_sealed_after
    assert "the log was rewritten and its hashes recomputed" in report.reason


def test_an_intact_signed_log_verifies_and_says_how(signing_key):
    entries(3)
    audit.seal()
    out, failure = verify_command()
    assert failure == ""
    assert "Keys: signed (HMAC-SHA256, key id key-2026): the chain head's MAC checks; 1 seal(s) check" in out


def test_a_forged_seal_is_named(signing_key):
    events = entries(2)
    tamper(
        "INSERT INTO promotions_auditseal (sequence, hash, created_at, key_id, mac) "
        "VALUES (%s, %s, CURRENT_TIMESTAMP, 'key-2026', %s)",
        [events[-1].sequence, events[-1].hash, "0" * 64],
    )
    _, failure = verify_command()
    assert "seal" in failure and "MAC does not match" in failure


def test_the_seal_task_seals_once_per_head_and_not_without_a_key(settings):
    settings.AUDIT_SIGNING_KEY = ""
    entries(1)
    assert tasks.seal_audit_log() is None and not AuditSeal.objects.exists()
    settings.AUDIT_SIGNING_KEY, settings.AUDIT_SIGNING_KEY_ID = KEY, "key-2026"
    head = AuditChainHead.objects.get().last_sequence
    assert tasks.seal_audit_log() == head
    assert tasks.seal_audit_log() is None  # nothing new since
    assert AuditSeal.objects.count() == 1
    assert audit.verify_database(parallel=False).ok


def test_beat_runs_the_seal_task(settings):
    assert any(e["task"] == "promotions.seal_audit_log" for e in settings.CELERY_BEAT_SCHEDULE.values())


def test_seals_are_append_only_and_the_head_only_moves_forward(signing_key):
    entries(2)
    audit.seal()
    for sql in (
        "UPDATE promotions_auditseal SET mac = 'x'",
        "DELETE FROM promotions_auditseal",
        "UPDATE promotions_auditchainhead SET last_sequence = last_sequence - 1",
        "UPDATE promotions_auditchainhead SET last_hash = 'f'",
        "DELETE FROM promotions_auditchainhead",
    ):
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    assert audit.verify_database(parallel=False).ok


def test_rotation_keeps_old_signatures_verifiable_and_names_a_missing_key(signing_key):
    signing_key.AUDIT_SIGNING_KEY, signing_key.AUDIT_SIGNING_KEY_ID = OLD_KEY, "key-2025"
    entries(2)
    audit.seal()
    signing_key.AUDIT_SIGNING_KEY, signing_key.AUDIT_SIGNING_KEY_ID = KEY, "key-2026"
    signing_key.AUDIT_SIGNING_KEYS_OLD = {"key-2025": OLD_KEY}
    assert audit.verify_database(parallel=False).ok
    entries(1)  # the head now under the new key; the old seal still under the old one
    assert audit.verify_database(parallel=False).ok
    signing_key.AUDIT_SIGNING_KEYS_OLD = {}
    report = audit.verify_database(parallel=False)
    assert not report.ok and "key id 'key-2025', which is not configured" in report.reason


# --- exports ------------------------------------------------------------------------------------


def export(tmp_path, fmt="jsonl"):
    path = tmp_path / f"log.{fmt}"
    call_command("export_audit_log", "--format", fmt, "-o", str(path), stdout=io.StringIO())
    return path, path.with_name(path.name + ".manifest.json")


def drop_last_row_and_rewrite_manifest(path, manifest_file) -> None:
    """A quiet cut of an export: the last row dropped, the manifest recomputed to match."""
    lines = path.read_bytes().decode().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]), encoding="utf-8", newline="")
    rows = [json.loads(line) for line in lines[:-1]]
    manifest = json.loads(manifest_file.read_text())
    manifest.update(
        rows=len(rows),
        last_sequence=rows[-1]["sequence"],
        chain_head=rows[-1]["hash"],
        database_head={"sequence": rows[-1]["sequence"], "hash": rows[-1]["hash"]},
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    manifest_file.write_text(json.dumps(manifest, indent=2))


def test_without_a_key_an_export_cut_short_with_a_rewritten_manifest_verifies(tmp_path):
    entries(4)
    path, manifest_file = export(tmp_path)
    drop_last_row_and_rewrite_manifest(path, manifest_file)
    out, failure = verify_command("--export", str(path))
    assert failure == "" and "unsigned" in out


def test_an_export_cut_short_with_a_rewritten_manifest_is_named(signing_key, tmp_path):
    entries(4)
    path, manifest_file = export(tmp_path)
    assert json.loads(manifest_file.read_text())["signature"]["key_id"] == "key-2026"
    assert verify_command("--export", str(path))[1] == ""
    drop_last_row_and_rewrite_manifest(path, manifest_file)
    _, failure = verify_command("--export", str(path))
    assert "the manifest's signature does not match" in failure


def test_an_export_whose_signature_was_removed_is_named(signing_key, tmp_path):
    entries(2)
    path, manifest_file = export(tmp_path, "csv")
    manifest = json.loads(manifest_file.read_text())
    del manifest["signature"]
    manifest_file.write_text(json.dumps(manifest))
    _, failure = verify_command("--export", str(path))
    assert "the manifest is not signed" in failure


def test_the_signature_is_a_mac_over_the_manifest_without_it(signing_key, tmp_path):
    """What an auditor with the key recomputes by hand, without this code's verifier."""
    entries(2)
    _, manifest_file = export(tmp_path)
    manifest = json.loads(manifest_file.read_text())
    signature = manifest.pop("signature")
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert signature == {
        "algorithm": "HMAC-SHA256",
        "key_id": "key-2026",
        "mac": hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest(),
    }
    assert signing.manifest_signature_problem({**manifest, "signature": signature}) == ""


def test_an_export_seals_the_log(signing_key, tmp_path):
    entries(2)
    export(tmp_path)
    assert AuditSeal.objects.order_by("-id").first().sequence == AuditChainHead.objects.get().last_sequence
