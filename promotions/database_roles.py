"""The two PostgreSQL roles: the owner migrates; the application role may not rewrite history.

With DATABASE_OWNER_URL set, `manage.py migrate` (promotions/management/commands/migrate.py) and
`manage.py create_database_roles` reconnect the default database as the owner role for their run;
everything else connects as DATABASE_URL's role, the application role. The owner owns every table
and the audit triggers; the application role gets, after every migrate, exactly:

- SELECT, INSERT, UPDATE, DELETE on the application's tables;
- SELECT, INSERT on the audit log and its seals (no UPDATE, DELETE or TRUNCATE);
- SELECT, UPDATE on the chain head (record() moves it; a trigger refuses moving it backwards);
- SELECT on django_migrations; USAGE on the sequences.

Not owning the tables, it can neither ALTER them nor drop their triggers. docs/security.md says
what this holds against and what it does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg import sql

from promotions.audit import triggers as audit_triggers

_CONNECTION_KEYS = ("USER", "PASSWORD", "HOST", "PORT")
INSERT_ONLY_TABLES = audit_triggers.APPEND_ONLY_TABLES
READ_ONLY_TABLES = ("django_migrations",)


def owner_configured() -> bool:
    return settings.DATABASE_OWNER is not None


@contextmanager
def connected_as_owner(connection: BaseDatabaseWrapper) -> Iterator[BaseDatabaseWrapper]:
    """`connection`, reconnected as the owner role until the block ends (as it was without
    DATABASE_OWNER_URL). Closes the connection on the way in and out: not inside a transaction."""
    owner = settings.DATABASE_OWNER
    if owner is None or connection.vendor != "postgresql":
        yield connection
        return
    if connection.in_atomic_block:
        raise RuntimeError("cannot switch to the owner role inside a transaction")
    saved = {key: connection.settings_dict.get(key) for key in _CONNECTION_KEYS}
    connection.close()
    connection.settings_dict.update({key: owner.get(key) for key in _CONNECTION_KEYS})
    try:
        yield connection
    finally:
        connection.close()
        connection.settings_dict.update(saved)


def _table_grants(table: str) -> tuple[str, ...]:
    if table in INSERT_ONLY_TABLES:
        return ("SELECT", "INSERT")
    if table == audit_triggers.HEAD_TABLE:
        return ("SELECT", "UPDATE")
    if table in READ_ONLY_TABLES:
        return ("SELECT",)
    return ("SELECT", "INSERT", "UPDATE", "DELETE")


def app_role_grant(connection: BaseDatabaseWrapper, role: str) -> None:
    """Give `role` exactly the privileges above on every table there is now (run as the owner)."""
    tables = connection.introspection.table_names()
    with connection.cursor() as cursor:
        name = connection.settings_dict["NAME"]
        role_id = sql.Identifier(role)
        cursor.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(name), role_id))
        cursor.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role_id))
        cursor.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(role_id))
        for table in tables:
            table_id = sql.Identifier(table)
            # Revoke first: a grant from an earlier layout (or by hand) must not linger.
            cursor.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(table_id, role_id))
            privileges = sql.SQL(", ").join(sql.SQL(p) for p in _table_grants(table))
            cursor.execute(sql.SQL("GRANT {} ON TABLE {} TO {}").format(privileges, table_id, role_id))


def app_role_create(connection: BaseDatabaseWrapper, role: str, password: str) -> bool:
    """Create the login role `role` unless it exists (the owner needs CREATEROLE); True if created.
    An existing role keeps its password unless one is given."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        exists = cursor.fetchone() is not None
        statement = (
            "ALTER ROLE {} LOGIN" if exists else "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
        )
        query = sql.SQL(statement).format(sql.Identifier(role))
        if password:
            query = sql.SQL("{} PASSWORD {}").format(query, sql.Literal(password))
        cursor.execute(query)
    return not exists
