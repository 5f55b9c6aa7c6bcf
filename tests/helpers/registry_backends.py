"""Test helpers that reach around the registry into its database, on SQLite and PostgreSQL alike.

They do what someone holding the database's owner credentials can do (drop or disable the
append-only triggers, then write), to prove the hash chain still finds it; and they run the raw
statements the append-only tests expect the database itself to refuse.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from normadd.registry.database import is_postgres_url


def raw_rows(location: str, statement: str, *values: object) -> list[dict[str, Any]]:
    """Rows of one statement run directly on the database (``?`` placeholders), committed."""
    if is_postgres_url(location):
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(location, autocommit=True, row_factory=dict_row) as db:
            cursor = db.execute(statement.replace("?", "%s"), values)  # type: ignore[arg-type]
            return list(cursor.fetchall()) if cursor.description else []
    with sqlite3.connect(location) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(statement, values).fetchall()]


def tamper(location: str, statement: str, *values: object) -> None:
    """Write around the append-only triggers, as an owner of the database can."""
    if is_postgres_url(location):
        import psycopg

        with psycopg.connect(location) as db, db.transaction():
            db.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
            db.execute(statement.replace("?", "%s"), values)  # type: ignore[arg-type]
            db.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
        return
    with sqlite3.connect(location) as db:
        db.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        db.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
        db.execute(statement, values)


def refused_error(location: str) -> type[Exception]:
    """The driver error a statement the schema refuses raises (a trigger or a CHECK constraint)."""
    if is_postgres_url(location):
        import psycopg

        return psycopg.Error
    return sqlite3.DatabaseError
