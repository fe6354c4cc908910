"""The audit log is append-only and proves itself."""

import io

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from promotions import audit
from promotions.audit import verify
from promotions.models import AuditEvent
from tests.factories import audit_history, note_acceptance
from tests.tampering import tamper, tampering_db

pytestmark = pytest.mark.django_db


def test_entries_chain_by_hash():
    first = audit.record(action="request.created", meaning="one", details={"n": 1})
    second = audit.record(action="review.approved", meaning="two")
    assert second.sequence == first.sequence + 1
    assert second.prev_hash == first.hash
    assert first.hash == audit.compute_hash(audit.payload_of(first))
    assert audit.verify_database().ok


def test_it_refuses_an_action_it_does_not_know():
    before = AuditEvent.objects.count()
    with pytest.raises(ValueError, match="'request.exploded' is not an audit action"):
        audit.record(action="request.exploded", meaning="never")
    assert AuditEvent.objects.count() == before


def test_it_takes_an_action_as_enum_member_and_stores_its_text():
    event = audit.record(action=audit.AuditAction.REGISTRY_DRIFT, meaning="moved")
    event.refresh_from_db()
    assert event.action == "registry.drift" and type(event.action) is str
    assert audit.verify_database().ok


@pytest.mark.parametrize(
    "sql", ["UPDATE promotions_auditevent SET meaning = 'edited'", "DELETE FROM promotions_auditevent"]
)
def test_the_database_refuses_update_and_delete(sql):
    audit.record(action="request.created", meaning="one")
    # As the restricted application role (DATABASE_OWNER_URL set), the privilege refuses it first.
    with (
        pytest.raises(DatabaseError, match="append-only|permission denied"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql)
    assert AuditEvent.objects.filter(meaning="one").exists()


def test_the_orm_cannot_edit_an_entry_either():
    event = audit.record(action="request.created", meaning="one")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(meaning="edited")


class Walks(list):
    """What each walk in parts answered: True when its parts all checked and joined up, False
    when it doubted and the one-process walk ran instead."""

    in_parts = False

    def answered(self, *accepted: bool) -> bool:
        return self == (list(accepted) if self.in_parts else [])


@pytest.fixture(
    params=[
        pytest.param("one process", marks=tampering_db),
        pytest.param("in parts", marks=pytest.mark.django_db(transaction=True)),
    ]
)
def walks(request, monkeypatch) -> Walks:
    """Walk the database's chain in one process, or (as a large log is) in parts by worker
    processes; those need committed entries, so that variant runs outside a test transaction."""
    answers = Walks()
    if request.param == "in parts":
        answers.in_parts = True
        monkeypatch.setattr(verify, "DATABASE_PARALLEL_MIN_ENTRIES", 0)
        monkeypatch.setattr(verify, "_cpus", lambda: 2)  # two workers, four parts, on any machine
        note_acceptance(monkeypatch, verify, "_parallel_database_walk", answers)
    return answers


def entries(n: int) -> list[AuditEvent]:
    """n entries that differ in their details as well as in their meaning."""
    return audit_history(n, details=lambda i: {"i": i})


def verify_command() -> str:
    """Run verify_audit_log; return the failure message (exit code 1) or ''."""
    try:
        call_command("verify_audit_log", stdout=io.StringIO())
    except CommandError as exc:
        assert exc.returncode == 1
        return str(exc)
    return ""


def test_verify_names_the_first_edited_entry(walks):
    events = entries(12)
    tamper("UPDATE promotions_auditevent SET meaning = 'edited' WHERE sequence = %s", [events[5].sequence])
    tamper("UPDATE promotions_auditevent SET meaning = 'edited' WHERE sequence = %s", [events[9].sequence])
    message = verify_command()
    assert message == f"Audit log broken at entry #{events[5].sequence}: its hash does not match its content."
    assert walks.answered(False)  # in parts: the doubt sent it to the one-process walk, which named it
    report = audit.verify_database()
    # the same report from both walks: entries read up to the bad one, the head of the last good one
    assert report == audit.ChainReport(
        False, events[5].sequence, events[4].hash, events[5].sequence, "its hash does not match its content"
    )


def test_verify_names_an_entry_whose_details_were_edited(walks):
    events = entries(6)
    tamper(
        "UPDATE promotions_auditevent SET details = %s WHERE sequence = %s", ['{"i": 99}', events[3].sequence]
    )
    assert f"broken at entry #{events[3].sequence}: its hash does not match" in verify_command()


@tampering_db
def test_a_value_django_could_not_have_written_is_a_bad_hash_not_a_crash():
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL refuses a timestamp that is not one")
    events = entries(3)
    tamper(
        "UPDATE promotions_auditevent SET created_at = 'yesterday' WHERE sequence = %s", [events[1].sequence]
    )
    assert f"broken at entry #{events[1].sequence}: its hash does not match" in verify_command()


def test_a_forged_entry_with_a_recomputed_hash_breaks_the_next_link(walks):
    events = entries(12)
    forged = AuditEvent.objects.get(sequence=events[6].sequence)
    forged.meaning = "entry 6 (never happened)"
    tamper(
        "UPDATE promotions_auditevent SET meaning = %s, hash = %s WHERE sequence = %s",
        [forged.meaning, audit.compute_hash(audit.payload_of(forged)), forged.sequence],
    )
    message = verify_command()
    assert message == (
        f"Audit log broken at entry #{events[7].sequence}: its prev_hash does not match the entry before it."
    )
    assert walks.answered(False)


def test_verify_names_a_deleted_entry(walks):
    events = entries(12)
    tamper("DELETE FROM promotions_auditevent WHERE sequence = %s", [events[6].sequence])
    assert verify_command() == (
        f"Audit log broken at entry #{events[7].sequence}: sequence {events[7].sequence} follows "
        f"{events[5].sequence}: an entry is missing or out of order."
    )
    assert walks.answered(False)


def test_verify_notices_entries_removed_from_the_end(walks):
    events = entries(12)
    tamper("DELETE FROM promotions_auditevent WHERE sequence = %s", [events[-1].sequence])
    assert verify_command() == (
        f"Audit log broken at entry #{events[-1].sequence}: the chain head records entry "
        f"{events[-1].sequence}, but the log ends at {events[-2].sequence}: entries at the end were removed."
    )
    # in parts: every part checks and joins up; it is the chain head that does not match
    assert walks.answered(True)
    report = audit.verify_database()
    assert (report.ok, report.count, report.head_hash) == (False, events[-2].sequence, events[-2].hash)


def test_verify_passes_an_intact_log(walks, capsys):
    events = entries(12)
    call_command("verify_audit_log")
    count = AuditEvent.objects.count()
    assert count == events[-1].sequence
    out = capsys.readouterr().out
    assert f"Audit log verified: {count} entries, head {events[-1].hash}" in out
    assert "Keys: unsigned (no AUDIT_SIGNING_KEY)" in out  # no key: what the hashes alone prove
    assert walks.answered(True)  # in parts: the workers' walk is what accepted it
    report = audit.verify_database()
    assert (report.ok, report.count, report.head_hash) == (True, count, events[-1].hash)


def test_entries_recorded_while_the_walk_runs_are_not_taken_for_removed_ones(monkeypatch):
    """The log is live: the chain head, read after the walk, may already be further on."""
    entries(5)
    walk_database = verify._walk_database
    appended = []

    def walk_then_record(*args, **kwargs):
        walk = walk_database(*args, **kwargs)
        if not appended:  # another request records entries as the first walk ends
            appended.extend(entries(2))
        return walk

    monkeypatch.setattr(verify, "_walk_database", walk_then_record)
    report = audit.verify_database(parallel=False)
    assert report == audit.ChainReport(True, appended[-1].sequence, appended[-1].hash)


def test_awkward_content_verifies(walks):
    audit.record(
        action="registry.drift",
        meaning='tab\there, new\nline\r\n, back\\slash, "quote", \u2028, 🚀, naïve',
        model_name="naïve",
        version=7,
        request_id=2**40,
        from_stage="Staging",
        to_stage="Production",
        details={"k": 'v\n\t"\\', "ü": [1, 2.5, 1e-7, None, True, {"z": "", "a": "é"}], "big": 10**20},
    )
    audit.record(action="registry.drift", meaning="", details={})
    entries(4)
    report = audit.verify_database()
    assert report.ok, report
    assert walks.answered(True)


def test_inside_a_transaction_the_walk_stays_in_one_process(monkeypatch):
    entries(4)
    monkeypatch.setattr(verify, "DATABASE_PARALLEL_MIN_ENTRIES", 0)
    monkeypatch.setattr(verify, "_cpus", lambda: 2)

    def no_fork(*args):
        raise AssertionError("worker processes started inside a transaction")

    monkeypatch.setattr(verify.multiprocessing, "get_context", no_fork)
    assert connection.in_atomic_block  # the test's transaction: its entries are not committed
    assert audit.verify_database().ok


def test_the_actor_is_kept_after_the_user_is_deleted(requester):
    event = audit.record(action="registry.drift", meaning="by riley", actor=requester)
    requester.delete()
    event.refresh_from_db()
    assert (event.actor_username, event.actor_name) == ("riley", "Riley Tester")
    assert audit.verify_database().ok
