"""The registry's database connection: an SQLite file or a PostgreSQL server behind one small interface.

The registry writes plain SQL with ``?`` placeholders and reads rows by column name or position.
:class:`SqliteDatabase` hands that to :mod:`sqlite3` as it is; :class:`PostgresDatabase` turns
``?`` into psycopg's ``%s`` and returns rows that behave like :class:`sqlite3.Row`. What differs
between the two beyond that (how a write transaction takes its lock, where the schema version and
the highest audit id issued are kept) is a method here, so the store and its migrations are one
code path. A location is a PostgreSQL database when it starts with ``postgresql://`` or
``postgres://``; anything else is an SQLite file. Messages name a PostgreSQL database by
:func:`redact`-ed URL: the password never appears in an error or a log.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from normadd.errors import NormaddError

POSTGRES_SCHEMES = ("postgresql", "postgres")
# pg_advisory_xact_lock keys: every write transaction takes WRITE_LOCK (one writer at a time, as
# SQLite's BEGIN IMMEDIATE), so the audit chain's "read the newest row, then append" cannot interleave.
WRITE_LOCK = 0x6E6F726D  # "norm"
_PLACEHOLDER = re.compile(r"\?")


def is_postgres_url(location: str | Path) -> bool:
    """True when ``location`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return isinstance(location, str) and urlsplit(location).scheme in POSTGRES_SCHEMES


def redact(location: str | Path) -> str:
    """The location as it may be shown: a URL's password (in the user part or a query) becomes ``***``."""
    text = str(location)
    if not is_postgres_url(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        netloc = f"{user}@{host}"
    query = urlencode(
        [(key, "***" if key.lower() == "password" else value) for key, value in parse_qsl(parts.query)], safe="*"
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Cursor(Protocol):
    """What the registry reads from an executed statement."""

    def fetchone(self) -> Any:
        """The next row, or None."""

    def fetchall(self) -> list[Any]:
        """The remaining rows."""

    def __iter__(self) -> Iterator[Any]:
        """The remaining rows, one by one."""


class Database(Protocol):
    """One connection to the registry's database (not thread-safe: the registry holds a lock around it).

    Attributes:
        dialect: ``sqlite`` or ``postgresql``.
        location: Where it is, fit to show (a file path, or a URL without its password).
    """

    dialect: str
    location: str

    @property
    def in_transaction(self) -> bool:
        """True while a transaction opened by :meth:`begin` is open."""

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        """Run one statement with ``?`` placeholders."""

    def execute_script(self, sql: str) -> None:
        """Run several statements (a migration), inside the open transaction."""

    def begin(self) -> None:
        """Open a write transaction that excludes every other writer until :meth:`commit`."""

    def commit(self) -> None:
        """Commit the open transaction."""

    def rollback(self) -> None:
        """Roll the open transaction back."""

    def close(self) -> None:
        """Close the connection."""

    def schema_version(self) -> int:
        """How many migrations the database has seen."""

    def set_schema_version(self, version: int) -> None:
        """Record the migrations seen (inside the migration's transaction)."""

    def audit_ids_issued(self) -> int:
        """The highest audit row id ever handed out (a deleted newest row leaves it behind)."""

    def note_audit_id(self, row_id: int) -> None:
        """Record that ``row_id`` was handed out (inside the transaction that appends it)."""

    def integrity_check(self) -> str:
        """The database's own consistency check: ``ok`` when sound."""


class SqliteDatabase:
    """An SQLite file in WAL mode with ``synchronous=FULL``: a committed write survives a kill or power loss.

    Raises:
        NormaddError: The file cannot be opened as an SQLite database.
    """

    dialect = "sqlite"

    def __init__(self, path: Path, timeout: float) -> None:
        self.location = str(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as error:
            raise NormaddError(f"registry {path} cannot be opened ({error}): is it a normadd database?") from None

    @property
    def in_transaction(self) -> bool:  # noqa: D102 (the protocol says it)
        return self._db.in_transaction

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:  # noqa: D102
        return self._db.execute(sql, tuple(parameters))

    def execute_script(self, sql: str) -> None:  # noqa: D102
        for statement in _split_sqlite_statements(sql):
            if statement.strip(" ;\n"):
                self._db.execute(statement)

    def begin(self) -> None:  # noqa: D102
        self._db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:  # noqa: D102
        self._db.execute("COMMIT")

    def rollback(self) -> None:  # noqa: D102
        self._db.execute("ROLLBACK")

    def close(self) -> None:  # noqa: D102
        self._db.close()

    def schema_version(self) -> int:  # noqa: D102
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, version: int) -> None:  # noqa: D102
        self._db.execute(f"PRAGMA user_version = {int(version)}")

    def audit_ids_issued(self) -> int:  # noqa: D102
        # AUTOINCREMENT's counter: SQLite keeps it in step with every id inserted, even an explicit one
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'").fetchone()
        return int(row[0]) if row else 0

    def note_audit_id(self, row_id: int) -> None:
        """Nothing to do: inserting the row moved AUTOINCREMENT's counter."""

    def integrity_check(self) -> str:  # noqa: D102
        return "; ".join(row[0] for row in self._db.execute("PRAGMA integrity_check"))


def _split_sqlite_statements(script: str) -> list[str]:
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


class Row(tuple[Any, ...]):
    """A PostgreSQL row read like :class:`sqlite3.Row`: by position, by column name, or as ``dict(row)``."""

    names: tuple[str, ...]

    def __new__(cls, names: tuple[str, ...], values: Sequence[Any]) -> Row:  # noqa: D102
        row = super().__new__(cls, values)
        row.names = names
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return super().__getitem__(self.names.index(key))
        return super().__getitem__(key)

    def keys(self) -> tuple[str, ...]:
        """The column names, in order."""
        return self.names


class PostgresDatabase:
    """A PostgreSQL database through psycopg 3 (autocommit outside explicit transactions).

    A write transaction takes a transaction-scoped advisory lock first, so writers from every
    process and replica run one after another, as on SQLite. A broken connection (the server
    restarted) is opened again at the next statement outside a transaction.

    Raises:
        NormaddError: The server cannot be reached, refuses the credentials, or has no such database
            (one line naming host, port and database; never the password).
    """

    dialect = "postgresql"

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.location = redact(url)
        self.timeout = timeout
        self._open = False  # a transaction begun here and not yet committed or rolled back
        self._db = self._connect()

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise NormaddError(
                f"registry {self.location} is on PostgreSQL, which needs psycopg: pip install 'normadd[postgresql]'"
            ) from None
        try:
            connection = psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self.timeout)), row_factory=_row_factory
            )
        except psycopg.Error as error:
            raise NormaddError(connection_problem(self.url, error)) from None
        # a lock wait longer than the timeout fails the statement instead of hanging a request
        connection.execute(f"SET lock_timeout = '{max(1, round(self.timeout * 1000))}ms'")
        return connection

    @property
    def in_transaction(self) -> bool:  # noqa: D102
        return self._open

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:  # noqa: D102
        import psycopg

        if self._db.broken:  # the server restarted or the network dropped: open a fresh connection
            if self.in_transaction:
                raise NormaddError(f"registry {self.location}: the connection was lost in a transaction; retry")
            self._db = self._connect()
        try:
            return self._db.execute(_placeholders(sql), tuple(parameters))  # type: ignore[no-any-return]
        except psycopg.OperationalError as error:  # connection lost, lock wait timed out: one line, no traceback
            raise NormaddError(f"registry {self.location}: {' '.join(str(error).split())}") from None

    def execute_script(self, sql: str) -> None:  # noqa: D102
        self._db.execute(sql)  # no parameters: psycopg sends several statements as one

    def begin(self) -> None:  # noqa: D102
        self.execute("BEGIN")
        self._open = True
        try:
            self.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
        except BaseException:
            self.rollback()
            raise

    def commit(self) -> None:  # noqa: D102
        try:
            self.execute("COMMIT")
        finally:
            self._open = False

    def rollback(self) -> None:  # noqa: D102
        self._open = False
        if not self._db.broken:
            self._db.execute("ROLLBACK")

    def close(self) -> None:  # noqa: D102
        self._db.close()

    def schema_version(self) -> int:  # noqa: D102
        # a catalog query, not to_regclass(): that reads the session's catalog cache, which can still
        # miss a table another process created while this one waited for the write lock
        exists = self.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() "
            "AND tablename = 'normadd_schema')"
        ).fetchone()[0]
        if not exists:
            return 0
        row = self.execute("SELECT version FROM normadd_schema").fetchone()
        return int(row[0]) if row else 0

    def set_schema_version(self, version: int) -> None:  # noqa: D102
        self.execute("CREATE TABLE IF NOT EXISTS normadd_schema (version INTEGER NOT NULL)")
        self.execute("DELETE FROM normadd_schema")
        self.execute("INSERT INTO normadd_schema (version) VALUES (?)", (int(version),))

    def audit_ids_issued(self) -> int:  # noqa: D102
        row = self.execute("SELECT seq FROM audit_log_issued").fetchone()
        return int(row[0]) if row else 0

    def note_audit_id(self, row_id: int) -> None:  # noqa: D102
        # a table, not a sequence: setval/nextval are not rolled back, this is
        self.execute("UPDATE audit_log_issued SET seq = GREATEST(seq, ?)", (int(row_id),))

    def integrity_check(self) -> str:  # noqa: D102
        self.execute("SELECT 1")  # PostgreSQL checksums and checks its pages itself; here: it answers
        return "ok"


def _placeholders(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled). The registry's SQL has no ``?`` in text."""
    return _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))


def _row_factory(cursor: Any) -> Any:
    names = tuple(column.name for column in cursor.description or ())

    def make(values: Sequence[Any]) -> Row:
        return Row(names, values)

    return make


def connection_problem(url: str, error: Exception) -> str:
    """One line saying why a PostgreSQL database could not be opened (host, port, database; no password)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    database = parts.path.lstrip("/") or parts.username or "(default)"
    where = f"PostgreSQL database '{database}' on {host}:{port}"
    text = " ".join(str(error).split())
    password = parts.password
    if password:
        text = text.replace(password, "***")
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return (
            f"{where} refused the credentials of user '{parts.username}': "
            "check the password (in the URL, PGPASSWORD or ~/.pgpass)"
        )
    if 'role "' in lowered and "does not exist" in lowered:
        return f"{where} has no user '{parts.username}': create the role or fix the user in the URL"
    if "database" in lowered and "does not exist" in lowered:
        return f"{where} does not exist: create it (createdb {database}) or fix the name in the URL"
    if "connection refused" in lowered or "could not connect" in lowered or "timeout" in lowered:
        return f"{where} cannot be reached (nothing answers there): is the server running and the host and port right?"
    if "could not translate host name" in lowered or "name or service not known" in lowered:
        return f"{where} cannot be reached: the host name '{host}' does not resolve"
    return f"{where} cannot be opened: {text.splitlines()[0] if text else type(error).__name__}"
