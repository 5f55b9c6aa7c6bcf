"""The registry's SQLite schema as an ordered list of migrations, applied once each.

``PRAGMA user_version`` holds how many migrations a database has seen; opening a database runs
the missing ones in one transaction each. Never edit a released migration: append a new one.
A migration is SQL text, or a function of the connection when it needs Python (e.g. hashing).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from normadd.registry.audit_chain import GENESIS, row_hash
from normadd.registry.errors import SchemaVersionError

Migration = str | Callable[[sqlite3.Connection], None]
NO_UPDATE_TRIGGER = """
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: rows cannot be changed'); END
"""


def _chain_audit_log(connection: sqlite3.Connection) -> None:
    """Give every audit row its place in the hash chain; rows already written are chained now."""
    connection.execute("ALTER TABLE audit_log ADD COLUMN prev_hash TEXT")
    connection.execute("ALTER TABLE audit_log ADD COLUMN row_hash TEXT")
    connection.execute("DROP TRIGGER audit_log_no_update")  # the one time existing rows are written to
    columns = ("id", "at", "line", "action", "who", "why", "details")
    prev = GENESIS
    for values in connection.execute(f"SELECT {', '.join(columns)} FROM audit_log ORDER BY id").fetchall():
        row = dict(zip(columns, values, strict=True))
        current = row_hash(row, prev)
        connection.execute("UPDATE audit_log SET prev_hash = ?, row_hash = ? WHERE id = ?", (prev, current, row["id"]))
        prev = current
    connection.execute(NO_UPDATE_TRIGGER)


MIGRATIONS: tuple[Migration, ...] = (
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
    # 3: staged and expiring normalities (issue 12); the index of retained images per line.
    """
    ALTER TABLE normalities ADD COLUMN state TEXT NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'staged', 'expired'));
    ALTER TABLE normalities ADD COLUMN until TEXT;
    CREATE TABLE retained_images (
        line TEXT NOT NULL REFERENCES lines(name),
        sha256 TEXT NOT NULL,
        filename TEXT NOT NULL,
        suffix TEXT NOT NULL,
        image_bytes INTEGER NOT NULL,
        features_sha256 TEXT,
        features_bytes INTEGER NOT NULL DEFAULT 0,
        features_identity TEXT,
        seen_at TEXT NOT NULL,
        seen INTEGER NOT NULL,
        PRIMARY KEY (line, sha256)
    );
    CREATE INDEX retained_images_recent ON retained_images (line, seen);
    """,
    # 4: visual normalities (issue 16): their example memory and the hashes of the images it came from.
    """
    ALTER TABLE normalities ADD COLUMN kind TEXT NOT NULL DEFAULT 'text';
    ALTER TABLE normalities ADD COLUMN memory BLOB;
    ALTER TABLE normalities ADD COLUMN sources TEXT;
    """,
    # 5: the audit log's hash chain (audit_chain.py); computed here for the rows already written.
    _chain_audit_log,
    # 6: changes waiting for a second person's approval (approvals.py), on lines with approval: required.
    """
    CREATE TABLE pending_changes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        line TEXT NOT NULL REFERENCES lines(name),
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        summary TEXT NOT NULL,
        why TEXT NOT NULL DEFAULT '',
        proposed_by TEXT NOT NULL,
        proposed_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
        decided_by TEXT,
        decided_at TEXT,
        decision_why TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX pending_changes_line ON pending_changes (line, status);
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
        migration = MIGRATIONS[version]
        connection.execute("BEGIN IMMEDIATE")
        try:
            # re-read under the write lock: another process may have migrated meanwhile
            if connection.execute("PRAGMA user_version").fetchone()[0] > version:
                connection.execute("ROLLBACK")
                continue
            if callable(migration):
                migration(connection)
            else:
                for statement in (s.strip() for s in _split_statements(migration)):
                    if statement:
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
