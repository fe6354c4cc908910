"""Changing the audit log behind the database's back, as only the owner role may.

Where the suite connects as the restricted application role (DATABASE_OWNER_URL set, as in
.ci/run's PostgreSQL pass), lifting the triggers needs the owner, on a connection of its own:
the test's changes must then be committed for it to see them, so a test that tampers is marked
`tampering_db` (transactional there, in a rolled-back transaction elsewhere).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection

from promotions import database_roles
from promotions.audit import triggers as audit_triggers

tampering_db = pytest.mark.django_db(transaction=database_roles.owner_configured())


@contextmanager
def triggers_lifted() -> Iterator:
    """The test database's connection, the append-only triggers lifted until the block ends."""
    with database_roles.connected_as_owner(connection):
        audit_triggers.remove(connection)
        try:
            yield connection
        finally:
            audit_triggers.install(connection)


def tamper(sql, params=()) -> None:
    with triggers_lifted() as owner, owner.cursor() as cursor:
        cursor.execute(sql, params)
