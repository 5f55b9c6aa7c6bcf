"""The registry's SQLite schema as an ordered list of migrations, applied once each.

``PRAGMA user_version`` holds how many migrations a database has seen; opening a database runs
the missing ones in one transaction each. Never edit a released migration: append a new one.
"""

from __future__ import annotations

import sqlite3

from normadd.registry.errors import SchemaVersionError

MIGRATIONS: tuple[str, ...] = (
    # 1: product lines, their active normalities, and the append-only audit log.
    """
    CREATE TABLE lines (
        name TEXT PRIMARY KEY,
        class_name TEXT NOT NULL,
        detector TEXT NOT NULL,
        backbone TEXT NOT NULL,
        weights TEXT,
        projections TEXT,
        layers TEXT,
        phrase_generator TEXT NOT NULL,
        settings TEXT NOT NULL DEFAULT '{}',
        revision INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    );
    CREATE TABLE normalities (
        line TEXT NOT NULL REFERENCES lines(name),
        name TEXT NOT NULL,
        text TEXT NOT NULL,
        strength REAL NOT NULL CHECK (strength >= 0.0 AND strength <= 1.0),
        phrases TEXT NOT NULL,
        embedding BLOB,
        embedding_backbone TEXT,
        added_at TEXT NOT NULL,
        added_by TEXT NOT NULL,
        PRIMARY KEY (line, name)
    );
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        line TEXT NOT NULL,
        action TEXT NOT NULL,
        who TEXT NOT NULL,
        why TEXT NOT NULL DEFAULT '',
        details TEXT NOT NULL
    );
    CREATE INDEX audit_log_line ON audit_log (line, id);
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: rows cannot be changed'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: rows cannot be deleted'); END;
    """,
    # 2: decisions (issue 11): one threshold per line, with the score scale it was set for, and
    # acceptance limits (max_area, max_length, region) per normality.
    """
    CREATE TABLE thresholds (
        line TEXT PRIMARY KEY REFERENCES lines(name),
        value REAL NOT NULL CHECK (value >= 0.0),
        scale TEXT,
        method TEXT NOT NULL,
        details TEXT NOT NULL DEFAULT '{}',
        set_at TEXT NOT NULL,
        set_by TEXT NOT NULL,
        why TEXT NOT NULL DEFAULT ''
    );
    ALTER TABLE normalities ADD COLUMN limits TEXT;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(connection: sqlite3.Connection) -> int:
    """Bring a database up to :data:`SCHEMA_VERSION`; returns the version it was at.

    Raises:
        SchemaVersionError: The database is newer than this code.
    """
    found = connection.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the registry has schema version {found}, this normadd knows up to {SCHEMA_VERSION}: upgrade normadd"
        )
    for version in range(found, SCHEMA_VERSION):
        statements = [s.strip() for s in _split_statements(MIGRATIONS[version]) if s.strip()]
        connection.execute("BEGIN IMMEDIATE")
        try:
            # re-read under the write lock: another process may have migrated meanwhile
            if connection.execute("PRAGMA user_version").fetchone()[0] > version:
                connection.execute("ROLLBACK")
                continue
            for statement in statements:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {version + 1}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    return found


def _split_statements(script: str) -> list[str]:
    """Split a migration into statements; trigger bodies keep their inner semicolons."""
    statements: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            statements.append(current)
            current = ""
    if current.strip(" ;\n"):
        statements.append(current)
    return statements
