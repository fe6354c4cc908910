"""Connected as the application's PostgreSQL role, the audit tables cannot be rewritten."""

import pytest
from django.db import DatabaseError, connection, transaction

from promotions import audit

pytestmark = pytest.mark.django_db

REFUSED = [
    "UPDATE promotions_auditevent SET meaning = 'edited'",
    "DELETE FROM promotions_auditevent",
    "TRUNCATE promotions_auditevent",
    "ALTER TABLE promotions_auditevent ADD COLUMN smuggled text",
    "ALTER TABLE promotions_auditevent DISABLE TRIGGER audit_no_change",
    "DROP TRIGGER audit_no_change ON promotions_auditevent",
    "DROP TRIGGER audit_no_truncate ON promotions_auditevent",
    "DROP FUNCTION audit_refuse_change() CASCADE",
    "CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger AS $$ BEGIN RETURN OLD; END; $$ "
    "LANGUAGE plpgsql",
    "UPDATE promotions_auditseal SET mac = 'x'",
    "DELETE FROM promotions_auditseal",
    "DROP TRIGGER audit_seal_no_change ON promotions_auditseal",
    "DELETE FROM promotions_auditchainhead",
    "DROP TRIGGER audit_head_forward_only ON promotions_auditchainhead",
]


@pytest.fixture
def on_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip(
            "database roles are PostgreSQL's; SQLite has one user (its triggers are tested elsewhere)"
        )


@pytest.mark.usefixtures("on_postgresql")
@pytest.mark.parametrize("sql", REFUSED)
def test_the_application_role_cannot_rewrite_the_audit_tables(sql):
    audit.record(action="registry.drift", meaning="kept")
    audit.seal()
    # Refused for want of the privilege or the ownership, before any trigger is asked.
    with (
        pytest.raises(DatabaseError, match="permission denied|must be owner"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql)
    assert audit.verify_database(parallel=False).ok


@pytest.mark.usefixtures("on_postgresql")
def test_the_application_role_owns_nothing_and_may_still_append():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner = current_user"
        )
        assert cursor.fetchall() == []
        cursor.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        )
        assert cursor.fetchone() == (False, False, False)
    event = audit.record(action="registry.drift", meaning="appended")
    assert event.hash == audit.compute_hash(audit.payload_of(event))
