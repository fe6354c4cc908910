"""The audit log is append-only and proves itself."""

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from promotions import audit, audit_triggers
from promotions.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_entries_chain_by_hash():
    first = audit.record(action="test.one", meaning="one", details={"n": 1})
    second = audit.record(action="test.two", meaning="two")
    assert second.sequence == first.sequence + 1
    assert second.prev_hash == first.hash
    assert first.hash == audit.compute_hash(audit.payload_of(first))
    assert audit.verify_database().ok


@pytest.mark.parametrize(
    "sql", ["UPDATE promotions_auditevent SET meaning = 'edited'", "DELETE FROM promotions_auditevent"]
)
def test_the_database_refuses_update_and_delete(sql):
    audit.record(action="test.one", meaning="one")
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql)
    assert AuditEvent.objects.filter(meaning="one").exists()


def test_the_orm_cannot_edit_an_entry_either():
    event = audit.record(action="test.one", meaning="one")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(meaning="edited")


def tamper(sql, params=()):
    audit_triggers.remove(connection)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    finally:
        audit_triggers.install(connection)


def test_verify_names_the_first_edited_entry():
    events = [audit.record(action="test.n", meaning=f"entry {i}") for i in range(5)]
    tamper("UPDATE promotions_auditevent SET meaning = 'edited' WHERE sequence = %s", [events[2].sequence])
    with pytest.raises(
        CommandError, match=rf"broken at entry #{events[2].sequence}: its hash does not match"
    ):
        call_command("verify_audit_log")


def test_verify_names_a_deleted_entry():
    events = [audit.record(action="test.n", meaning=f"entry {i}") for i in range(5)]
    tamper("DELETE FROM promotions_auditevent WHERE sequence = %s", [events[1].sequence])
    with pytest.raises(CommandError, match=rf"broken at entry #{events[2].sequence}: sequence"):
        call_command("verify_audit_log")


def test_verify_notices_entries_removed_from_the_end():
    events = [audit.record(action="test.n", meaning=f"entry {i}") for i in range(3)]
    tamper("DELETE FROM promotions_auditevent WHERE sequence = %s", [events[-1].sequence])
    with pytest.raises(CommandError, match="entries at the end were removed"):
        call_command("verify_audit_log")


def test_verify_passes_an_intact_log(capsys):
    audit.record(action="test.n", meaning="fine")
    call_command("verify_audit_log")
    assert "Audit log verified" in capsys.readouterr().out


def test_the_actor_is_kept_after_the_user_is_deleted(requester):
    event = audit.record(action="test.n", meaning="by riley", actor=requester)
    requester.delete()
    event.refresh_from_db()
    assert (event.actor_username, event.actor_name) == ("riley", "Riley Tester")
    assert audit.verify_database().ok
