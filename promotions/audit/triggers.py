"""Database triggers that make the audit tables append-only and the chain head forward-only.

Used by the migrations that install them, and by the test harness, which must remove them
around Django's between-test flush (a flush is a DELETE the triggers rightly refuse).

Triggers stop the application's own mistakes and anyone holding the application's database role
(which, under docs/postgres-roles.sql, may not drop them: the owner role owns the tables). The
owner can still lift them; what catches that is the signing key (audit/signing.py).
"""

from __future__ import annotations

TABLE = "promotions_auditevent"
SEAL_TABLE = "promotions_auditseal"
HEAD_TABLE = "promotions_auditchainhead"
APPEND_ONLY_TABLES = (TABLE, SEAL_TABLE)
MESSAGE = "audit log is append-only"
HEAD_MESSAGE = "audit chain head only moves forward"


# (update, delete) trigger names; the audit table's are the names its first migration gave them.
_SQLITE_NAMES = {
    TABLE: ("audit_no_update", "audit_no_delete"),
    SEAL_TABLE: ("audit_seal_no_update", "audit_seal_no_delete"),
}


def _sqlite_install(table: str) -> list[str]:
    if table == HEAD_TABLE:
        # Same sequence with the same hash is allowed: that is the head getting its MAC.
        return [
            f"CREATE TRIGGER IF NOT EXISTS audit_head_forward_only BEFORE UPDATE ON {table} "
            "WHEN NEW.last_sequence < OLD.last_sequence OR (NEW.last_sequence = OLD.last_sequence "
            f"AND NEW.last_hash <> OLD.last_hash) BEGIN SELECT RAISE(ABORT, '{HEAD_MESSAGE}'); END;",
            f"CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{HEAD_MESSAGE}'); END;",
        ]
    update, delete = _SQLITE_NAMES[table]
    return [
        f"CREATE TRIGGER IF NOT EXISTS {update} BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END;",
        f"CREATE TRIGGER IF NOT EXISTS {delete} BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END;",
    ]


def _sqlite_remove(table: str) -> list[str]:
    names = (
        ("audit_head_forward_only", "audit_head_no_delete") if table == HEAD_TABLE else _SQLITE_NAMES[table]
    )
    return [f"DROP TRIGGER IF EXISTS {name};" for name in names]


_POSTGRES_FUNCTIONS = [
    f"""CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger AS $$
    BEGIN RAISE EXCEPTION '{MESSAGE}'; END; $$ LANGUAGE plpgsql;""",
    f"""CREATE OR REPLACE FUNCTION audit_head_forward_only() RETURNS trigger AS $$
    BEGIN
      IF TG_OP <> 'UPDATE' OR NEW.last_sequence < OLD.last_sequence
         OR (NEW.last_sequence = OLD.last_sequence AND NEW.last_hash <> OLD.last_hash) THEN
        RAISE EXCEPTION '{HEAD_MESSAGE}';
      END IF;
      RETURN NEW;
    END; $$ LANGUAGE plpgsql;""",
]


def _postgres_names(table: str) -> tuple[str, str]:
    if table == TABLE:
        return "audit_no_change", "audit_no_truncate"
    if table == SEAL_TABLE:
        return "audit_seal_no_change", "audit_seal_no_truncate"
    return "audit_head_forward_only", "audit_head_no_truncate"


def _postgres_install(table: str) -> list[str]:
    row, truncate = _postgres_names(table)
    function = "audit_head_forward_only" if table == HEAD_TABLE else "audit_refuse_change"
    return [
        f"DROP TRIGGER IF EXISTS {row} ON {table};",
        f"CREATE TRIGGER {row} BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {function}();",
        f"DROP TRIGGER IF EXISTS {truncate} ON {table};",
        f"CREATE TRIGGER {truncate} BEFORE TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}();",
    ]


def _postgres_remove(table: str) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {name} ON {table};" for name in _postgres_names(table)]


ALL_TABLES = (TABLE, SEAL_TABLE, HEAD_TABLE)


def _statements(connection, *, install: bool, tables: tuple[str, ...]) -> list[str]:
    # Only the tables that exist: the migration that made the audit table append-only runs before
    # the seal table exists, and the one that adds the seal table installs the rest.
    existing = set(connection.introspection.table_names())
    tables = tuple(table for table in tables if table in existing)
    if connection.vendor == "sqlite":
        return [sql for table in tables for sql in (_sqlite_install if install else _sqlite_remove)(table)]
    if connection.vendor == "postgresql":
        if not install:
            return [sql for table in tables for sql in _postgres_remove(table)]
        return [*_POSTGRES_FUNCTIONS, *(sql for table in tables for sql in _postgres_install(table))]
    raise NotImplementedError(f"No append-only triggers for {connection.vendor}")


def install(connection, tables: tuple[str, ...] = ALL_TABLES) -> None:
    with connection.cursor() as cursor:
        for sql in _statements(connection, install=True, tables=tables):
            cursor.execute(sql)


def remove(connection, tables: tuple[str, ...] = ALL_TABLES) -> None:
    with connection.cursor() as cursor:
        for sql in _statements(connection, install=False, tables=tables):
            cursor.execute(sql)
