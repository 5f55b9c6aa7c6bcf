"""The registry: product lines, their active normalities and the audit log, in SQLite or PostgreSQL.

The database is an SQLite file (the embedded default) or a PostgreSQL database named by a
``postgresql://`` URL (:mod:`normadd.registry.database` hides the difference). Every change is
one write transaction that writes the change *and* its audit row, so a crash leaves either both
or neither; one writer at a time (SQLite's ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock), so
audit rows from several processes interleave into one valid chain. SQLite runs WAL journaling
with ``synchronous=FULL``: a committed transaction survives the process being killed (and power
loss); PostgreSQL's default ``synchronous_commit`` gives the same. Nothing here
imports torch: ``f_add`` is kept as float32 bytes and turned into a tensor by the caller.
Every audit row is chained to the one before by SHA-256 (:mod:`normadd.registry.audit_chain`),
in :meth:`Registry._audit`, the one place rows are appended.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from normadd.errors import NormaddError
from normadd.registry.audit_chain import GENESIS, ChainReport, row_hash, verify_rows
from normadd.registry.database import Database, PostgresDatabase, SqliteDatabase, is_postgres_url
from normadd.registry.errors import (
    DuplicateNormalityError,
    LineExistsError,
    LineNotFoundError,
    NormalityNotFoundError,
    RegistryError,
)
from normadd.registry.schema import migrate

DEFAULT_DATABASE = Path("normadd.db")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def utc_now() -> datetime:
    """The current time in UTC (the registry's default clock)."""
    return datetime.now(UTC)


NORMALITY_STATES = ("active", "staged", "expired")


@dataclass
class LineRecord:
    """One product line as stored.

    Attributes:
        name: The line's key (e.g. ``bottle-line-3``).
        class_name: The product class the prompts name (e.g. ``bottle``).
        detector: The anomaly detector (``aprilgan``).
        backbone: The CLIP backbone name.
        weights: Path of the CLIP weights, or None for the backbone's default resolution.
        projections: Path of the APRIL-GAN projections, or None for the training-free fallback.
        layers: Tapped blocks, or None for the backbone's default.
        phrase_generator: ``offline`` or ``llm``.
        settings: The line config's further detector settings (e.g. ``shots``), kept as given.
        created_at: ISO time (UTC) of creation; set by the registry.
    """

    name: str
    class_name: str
    detector: str = "aprilgan"
    backbone: str = "ViT-L-14-336"
    weights: str | None = None
    projections: str | None = None
    layers: list[int] | None = None
    phrase_generator: str = "offline"
    settings: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""


@dataclass
class NormalityRecord:
    """One active normality of a line.

    Attributes:
        name: Key used to remove it.
        text: The defect text.
        strength: s in [0, 1].
        phrases: The state phrases it was expanded into.
        embedding: ``f_add`` as little-endian float32 bytes (None when not computed).
        embedding_backbone: Identity of the encoder ``embedding`` was computed with; a line whose
            backbone or weights changed recomputes it.
        added_at: ISO time (UTC); set by the registry.
        added_by: Who added it; set by the registry.
        state: ``active`` (applied), ``staged`` (stored and previewable, not applied until
            activated) or ``expired`` (its ``until`` passed; no longer applied).
        until: ISO time (UTC) after which it stops applying, or None for no end.
        limits: Acceptance limits (``max_area``, ``max_length``, ``region``), or None.
        kind: ``text`` (named by text) or ``visual`` (shown by example images).
        memory: A visual normality's example memory, serialised (``embedding_backbone`` names its encoder).
        sources: A visual normality's example images: name and SHA-256 of each image and of its mask.
    """

    name: str
    text: str
    strength: float
    phrases: list[str] = field(default_factory=list)
    embedding: bytes | None = None
    embedding_backbone: str | None = None
    added_at: str = ""
    added_by: str = ""
    state: str = "active"
    until: str | None = None
    limits: dict[str, Any] | None = None
    kind: str = "text"
    memory: bytes | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ThresholdRecord:
    """A line's threshold as stored.

    Attributes:
        value: NG when a score is above it.
        scale: The detector identity it was set for (``normadd.decisions.scale``), or None.
        method: ``set`` (by a person), ``false-reject`` or ``f1`` (calibrated).
        details: How it was found (rate, image counts, escape rate …).
        set_at: ISO time (UTC); set by the registry.
        set_by: Who set it; set by the registry.
        why: The reason given.
    """

    value: float
    scale: dict[str, str] | None = None
    method: str = "set"
    details: dict[str, Any] = field(default_factory=dict)
    set_at: str = ""
    set_by: str = ""
    why: str = ""


@dataclass
class InspectionRecord:
    """One inspected image, as the audit log keeps it."""

    image_sha256: str
    score_before: float
    score_after: float
    normalities: list[dict[str, Any]]
    filename: str = ""
    decision: dict[str, Any] | None = None  # verdict_before/after, accepted_by … (issue 11)


@dataclass
class AuditEntry:
    """One row of the append-only audit log.

    Attributes:
        id: Increasing row id.
        at: ISO time (UTC).
        line: The line it concerns.
        action: ``line.create``, ``normality.add``, ``normality.activate``, ``normality.expire``,
            ``normality.remove``, ``normality.preview``, ``threshold.set``, ``threshold.clear`` or ``inspect``.
        who: The person or API key name that did it.
        why: The reason given ("" when none).
        details: What changed or what was inspected.
        prev_hash: The previous row's ``row_hash`` (the chain's link).
        row_hash: SHA-256 over this row's canonical JSON and ``prev_hash``.
    """

    id: int
    at: str
    line: str
    action: str
    who: str
    why: str
    details: dict[str, Any]
    prev_hash: str | None = None
    row_hash: str | None = None


class Registry:
    """The store of one deployment (an SQLite file or a PostgreSQL database). Thread-safe; one connection per instance.

    Args:
        path: Database file, created (with its folder) when missing; or a ``postgresql://`` /
            ``postgres://`` URL (the password from the URL, ``PGPASSWORD`` or ``~/.pgpass``).
        timeout: Seconds to wait for another process's write lock (and, on PostgreSQL, to connect).
        clock: The current time (UTC) that decides when a normality's ``until`` has passed and
            when a pending change expires; tests pass a fake one instead of sleeping.
        retained_dir: Folder of the retained images' files; by default ``<file>.retained`` beside
            an SQLite file, ``<database>.retained`` in the working folder for PostgreSQL.

    Raises:
        NormaddError: The file cannot be opened as an SQLite database; the PostgreSQL server cannot
            be reached, refuses the credentials or has no such database; the schema is newer than
            this code. The message names the database without its password.
    """

    def __init__(
        self,
        path: str | Path = DEFAULT_DATABASE,
        timeout: float = 30.0,
        clock: Callable[[], datetime] = utc_now,
        retained_dir: Path | None = None,
    ) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self._db: Database
        if is_postgres_url(path):
            self.path: Path | None = None
            self._db = PostgresDatabase(str(path), timeout)
            database = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(path).rsplit("/", 1)[-1].split("?")[0]) or "normadd"
            self.retained_root = retained_dir or Path(f"{database}.retained")
        else:
            self.path = Path(path)
            self._db = SqliteDatabase(self.path, timeout)
            self.retained_root = retained_dir or self.path.with_name(self.path.name + ".retained")
        self.location = self._db.location
        self.dialect = self._db.dialect
        try:
            migrate(self._db)
        except NormaddError:
            self._db.close()
            raise
        except Exception as error:  # the driver's own errors (sqlite3 or psycopg), in one line
            self._db.close()
            raise NormaddError(
                f"registry {self.location} cannot be opened ({' '.join(str(error).split())}): "
                "is it a normadd database?"
            ) from None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[Database]:
        """One write transaction: everything inside commits together or not at all.

        A transaction opened inside another one (same thread) joins it: an approval applies its
        change and records the decision in one commit.
        """
        with self._lock:
            if self._db.in_transaction:  # we hold the lock, so it is this thread's transaction
                yield self._db
                return
            self._db.begin()
            try:
                yield self._db
            except BaseException:
                self._db.rollback()
                raise
            self._db.commit()

    transaction = _transaction  # public name for modules that build on the registry (approvals, retention)

    def now(self) -> str:
        """The registry clock's time as ISO text (UTC, milliseconds)."""
        return self.clock().astimezone(UTC).isoformat(timespec="milliseconds")

    def query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of one read query, for the registry's own modules."""
        with self._lock:
            return self._db.execute(sql, parameters).fetchall()

    def audit_event(self, line: str, action: str, who: str, why: str, details: dict[str, Any]) -> int:
        """Log one event that changes nothing else (e.g. a preview) on an existing line; returns its id.

        Raises:
            LineNotFoundError: No such line.
        """
        self.line(line)
        return self.record(line, action, who, why, details)

    def _audit(
        self, db: Database, line: str, action: str, who: str, why: str, details: dict[str, Any]
    ) -> int:
        """Append one audit row, chained to the newest one (call inside a write transaction)."""
        last = db.execute("SELECT id, row_hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
        row: dict[str, Any] = {
            # the id is part of the hash, so it is chosen here; never reused, even after a deletion
            "id": max(db.audit_ids_issued(), int(last[0]) if last else 0) + 1,
            "at": _now(),
            "line": line,
            "action": action,
            "who": who or "unknown",
            "why": why or "",
            "details": json.dumps(details, sort_keys=True),
        }
        prev = (last[1] if last else None) or GENESIS
        db.execute(
            "INSERT INTO audit_log (id, at, line, action, who, why, details, prev_hash, row_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*row.values(), prev, row_hash(row, prev)),
        )
        db.note_audit_id(int(row["id"]))
        return int(row["id"])

    def record(self, line: str, action: str, who: str, why: str = "", details: dict[str, Any] | None = None) -> int:
        """Append an audit row that goes with no stored change (a refused request, a finding); returns its id."""
        with self._transaction() as db:
            return self._audit(db, line, action, who, why, details or {})

    # --- product lines -------------------------------------------------------------------

    def create_line(self, line: LineRecord, who: str, why: str = "") -> LineRecord:
        """Store a new product line; returns it with ``created_at`` set.

        Raises:
            LineExistsError: A line of that name exists.
        """
        line.created_at = _now()
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM lines WHERE name = ?", (line.name,)).fetchone():
                raise LineExistsError(f"line '{line.name}' already exists: pick another name or use it as it is")
            db.execute(
                "INSERT INTO lines (name, class_name, detector, backbone, weights, projections, layers, "
                "phrase_generator, settings, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    line.name,
                    line.class_name,
                    line.detector,
                    line.backbone,
                    line.weights,
                    line.projections,
                    json.dumps(line.layers) if line.layers else None,
                    line.phrase_generator,
                    json.dumps(line.settings, sort_keys=True),
                    line.created_at,
                ),
            )
            details = {k: v for k, v in asdict(line).items() if k not in ("name", "created_at")}
            self._audit(db, line.name, "line.create", who, why, details)
        return line

    def update_line_settings(self, name: str, changes: dict[str, Any], who: str, why: str = "") -> LineRecord:
        """Change entries of a line's ``settings`` (e.g. ``approval``) and log the old and new values.

        Raises:
            LineNotFoundError: No such line.
        """
        with self._transaction() as db:
            before = self.line(name).settings
            after = {**before, **changes}
            db.execute("UPDATE lines SET settings = ? WHERE name = ?", (json.dumps(after, sort_keys=True), name))
            details = {"changes": changes, "before": {key: before.get(key) for key in changes}}
            self._audit(db, name, "line.settings", who, why, details)
        return self.line(name)

    def line(self, name: str) -> LineRecord:
        """The line of that name.

        Raises:
            LineNotFoundError: No such line (the message lists the known ones).
        """
        with self._lock:
            row = self._db.execute("SELECT * FROM lines WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = ", ".join(line.name for line in self.lines()) or "none yet"
            raise LineNotFoundError(f"no product line named '{name}' (known: {known})")
        data = dict(row)
        data["layers"] = json.loads(data["layers"]) if data["layers"] else None
        data["settings"] = json.loads(data["settings"])
        data.pop("revision")
        return LineRecord(**data)

    def lines(self) -> list[LineRecord]:
        """All lines, by name."""
        with self._lock:
            names = [row[0] for row in self._db.execute("SELECT name FROM lines ORDER BY name")]
        return [self.line(name) for name in names]

    # --- normalities ---------------------------------------------------------------------

    def add_normality(self, line: str, normality: NormalityRecord, who: str, why: str = "") -> NormalityRecord:
        """Store a normality on a line (active, or ``staged``) and log it; returns it with ``added_at/by`` set.

        An expired normality of the same name is replaced (the audit row says so).

        Raises:
            LineNotFoundError: No such line.
            DuplicateNormalityError: A normality of that name is already active or staged there.
            ValueError: An unknown state, or an ``until`` that has passed.
        """
        self.line(line)
        if normality.state not in ("active", "staged"):
            raise ValueError(f"a normality is added as 'active' or 'staged', not '{normality.state}'")
        if normality.until is not None and datetime.fromisoformat(normality.until) <= self.clock():
            raise ValueError(f"until {normality.until} has passed: give a later time (UTC, ISO 8601)")
        normality.added_at, normality.added_by = _now(), who or "unknown"
        with self._transaction() as db:
            existing = db.execute(
                "SELECT state FROM normalities WHERE line = ? AND name = ?", (line, normality.name)
            ).fetchone()
            if existing is not None and existing[0] != "expired":
                raise DuplicateNormalityError(
                    f"normality '{normality.name}' is already {existing[0]} on line '{line}': "
                    "remove it first to change it"
                )
            if existing is not None:
                db.execute("DELETE FROM normalities WHERE line = ? AND name = ?", (line, normality.name))
            db.execute(
                "INSERT INTO normalities (line, name, text, strength, phrases, embedding, embedding_backbone, "
                "added_at, added_by, state, until, limits, kind, memory, sources) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    line,
                    normality.name,
                    normality.text,
                    float(normality.strength),
                    json.dumps(normality.phrases),
                    normality.embedding,
                    normality.embedding_backbone,
                    normality.added_at,
                    normality.added_by,
                    normality.state,
                    normality.until,
                    json.dumps(normality.limits, sort_keys=True) if normality.limits else None,
                    normality.kind,
                    normality.memory,
                    json.dumps(normality.sources) if normality.sources else None,
                ),
            )
            details: dict[str, Any] = {
                "name": normality.name,
                "text": normality.text,
                "strength": normality.strength,
                "phrases": normality.phrases,
            }
            if normality.state != "active":
                details["state"] = normality.state
            if normality.until is not None:
                details["until"] = normality.until
            if existing is not None:
                details["replaces_expired"] = True
            if normality.limits:
                details["limits"] = normality.limits
            if normality.kind != "text":  # the examples are audited by their hashes: what was shown is traceable
                details.update(kind=normality.kind, sources=normality.sources)
            db.execute("UPDATE lines SET revision = revision + 1 WHERE name = ?", (line,))
            self._audit(db, line, "normality.add", who, why, details)
        return normality

    def remove_normality(self, line: str, name: str, who: str, why: str = "") -> NormalityRecord:
        """Deactivate a normality and log it; returns what was removed.

        Raises:
            LineNotFoundError: No such line.
            NormalityNotFoundError: No active normality of that name.
        """
        self.line(line)
        with self._transaction() as db:
            row = db.execute("SELECT * FROM normalities WHERE line = ? AND name = ?", (line, name)).fetchone()
            if row is None:
                rows = db.execute("SELECT name, state FROM normalities WHERE line = ? ORDER BY rowid", (line,))
                stored = [(r[0], r[1]) for r in rows]
                known = "; ".join(
                    f"{state}: {', '.join(n for n, s in stored if s == state)}"
                    for state in NORMALITY_STATES
                    if any(s == state for _, s in stored)
                )
                known = known or "active: none"
                raise NormalityNotFoundError(f"no normality named '{name}' on line '{line}' ({known})")
            db.execute("DELETE FROM normalities WHERE line = ? AND name = ?", (line, name))
            removed = _normality(row)
            details: dict[str, Any] = {
                "name": removed.name,
                "text": removed.text,
                "strength": removed.strength,
                "state": removed.state,
            }
            if removed.kind != "text":
                details.update(kind=removed.kind, sources=removed.sources)
            db.execute("UPDATE lines SET revision = revision + 1 WHERE name = ?", (line,))
            self._audit(db, line, "normality.remove", who, why, details)
        return removed

    def revision(self, line: str) -> int:
        """How many times the line's normalities changed (a cheap check for other writers' changes).

        Raises:
            LineNotFoundError: No such line.
        """
        with self._lock:
            row = self._db.execute("SELECT revision FROM lines WHERE name = ?", (line,)).fetchone()
        if row is None:
            self.line(line)  # raises, naming the known lines
        return int(row[0])

    def normalities(self, line: str, states: tuple[str, ...] = ("active",)) -> list[NormalityRecord]:
        """A line's normalities in ``states`` (by default the active ones, which apply), oldest first.

        Raises:
            LineNotFoundError: No such line.
        """
        self.line(line)
        marks = ", ".join("?" for _ in states)
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM normalities WHERE line = ? AND state IN ({marks}) ORDER BY added_at, rowid",
                (line, *states),
            ).fetchall()
        return [_normality(row) for row in rows]

    def activate_normality(self, line: str, name: str, who: str, why: str = "") -> NormalityRecord:
        """Make a staged normality apply, and log it; returns it.

        Raises:
            LineNotFoundError: No such line.
            NormalityNotFoundError: No normality of that name.
            RegistryError: It is already active, or expired (add it again), or its ``until`` has passed.
        """
        self.line(line)
        with self._transaction() as db:
            row = db.execute("SELECT * FROM normalities WHERE line = ? AND name = ?", (line, name)).fetchone()
            if row is None:
                staged = db.execute("SELECT name FROM normalities WHERE line = ? AND state = 'staged'", (line,))
                known = [r[0] for r in staged]
                raise NormalityNotFoundError(
                    f"no normality named '{name}' on line '{line}' (staged: {', '.join(known) or 'none'})"
                )
            record = _normality(row)
            if record.state == "active":
                raise RegistryError(f"normality '{name}' is already active on line '{line}': nothing to activate")
            if record.state == "expired":
                raise RegistryError(
                    f"normality '{name}' on line '{line}' expired at {record.until}: add it again with a later --until"
                )
            if record.until is not None and datetime.fromisoformat(record.until) <= self.clock():
                raise RegistryError(
                    f"normality '{name}' on line '{line}' was staged until {record.until}, which has passed: "
                    "remove it and add it again with a later --until"
                )
            db.execute("UPDATE normalities SET state = 'active' WHERE line = ? AND name = ?", (line, name))
            db.execute("UPDATE lines SET revision = revision + 1 WHERE name = ?", (line,))
            details = {"name": name, "text": record.text, "strength": record.strength, "until": record.until}
            self._audit(db, line, "normality.activate", who, why, details)
        record.state = "active"
        return record

    def expire_due(self, line: str) -> list[NormalityRecord]:
        """Mark the line's normalities whose ``until`` has passed (by :attr:`clock`) as expired, audited.

        Called at an inspection: the audit row of each expiry is written at the first inspection
        after its ``until``, and that inspection runs without it.

        Returns:
            The normalities that expired now (empty when none was due).
        """
        now = self.clock()
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM normalities WHERE line = ? AND state IN ('active', 'staged') AND until IS NOT NULL",
                (line,),
            ).fetchall()
            due = [record for record in map(_normality, rows) if datetime.fromisoformat(str(record.until)) <= now]
            for record in due:
                db.execute("UPDATE normalities SET state = 'expired' WHERE line = ? AND name = ?", (line, record.name))
                details = {
                    "name": record.name,
                    "text": record.text,
                    "until": record.until,
                    "was": record.state,
                    "noticed_at": now.isoformat(timespec="milliseconds"),
                }
                why = f"its until ({record.until}) passed; noticed at the first inspection after it"
                self._audit(db, line, "normality.expire", "normadd", why, details)
                record.state = "expired"
            if due:
                db.execute("UPDATE lines SET revision = revision + 1 WHERE name = ?", (line,))
        return due

    # --- thresholds ----------------------------------------------------------------------

    def set_threshold(self, line: str, threshold: ThresholdRecord, who: str, why: str = "") -> ThresholdRecord:
        """Store a line's threshold (replacing the one before) and log it with who and why.

        Raises:
            LineNotFoundError: No such line.
            NormaddError: A value that is not a finite number >= 0.
        """
        from normadd.decisions.thresholds import check_threshold

        threshold.value = check_threshold(threshold.value)
        self.line(line)
        threshold.set_at, threshold.set_by, threshold.why = _now(), who or "unknown", why or ""
        with self._transaction() as db:
            previous = db.execute("SELECT value FROM thresholds WHERE line = ?", (line,)).fetchone()
            db.execute(
                "INSERT INTO thresholds (line, value, scale, method, details, set_at, set_by, why) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (line) DO UPDATE SET value = excluded.value, "
                "scale = excluded.scale, method = excluded.method, details = excluded.details, "
                "set_at = excluded.set_at, set_by = excluded.set_by, why = excluded.why",
                (
                    line,
                    threshold.value,
                    json.dumps(threshold.scale, sort_keys=True) if threshold.scale is not None else None,
                    threshold.method,
                    json.dumps(threshold.details, sort_keys=True),
                    threshold.set_at,
                    threshold.set_by,
                    threshold.why,
                ),
            )
            details = {
                "value": threshold.value,
                "previous": None if previous is None else previous[0],
                "method": threshold.method,
                "scale": threshold.scale,
                **threshold.details,
            }
            self._audit(db, line, "threshold.set", who, why, details)
        return threshold

    def threshold(self, line: str) -> ThresholdRecord | None:
        """The line's threshold, or None when it has none.

        Raises:
            LineNotFoundError: No such line.
        """
        self.line(line)
        with self._lock:
            row = self._db.execute("SELECT * FROM thresholds WHERE line = ?", (line,)).fetchone()
        if row is None:
            return None
        return ThresholdRecord(
            value=row["value"],
            scale=json.loads(row["scale"]) if row["scale"] else None,
            method=row["method"],
            details=json.loads(row["details"]),
            set_at=row["set_at"],
            set_by=row["set_by"],
            why=row["why"],
        )

    def clear_threshold(self, line: str, who: str, why: str = "") -> ThresholdRecord | None:
        """Remove a line's threshold (its verdicts become undecided) and log it; returns the old one.

        Raises:
            LineNotFoundError: No such line.
        """
        previous = self.threshold(line)
        with self._transaction() as db:
            db.execute("DELETE FROM thresholds WHERE line = ?", (line,))
            self._audit(db, line, "threshold.clear", who, why, {"previous": previous.value if previous else None})
        return previous

    # --- audit ---------------------------------------------------------------------------

    def record_inspections(self, line: str, inspections: list[InspectionRecord], who: str) -> list[int]:
        """Log inspected images (one audit row each, one transaction); returns their ids.

        Raises:
            LineNotFoundError: No such line.
        """
        self.line(line)
        with self._transaction() as db:
            return [self._audit(db, line, "inspect", who, "", _inspection_details(item)) for item in inspections]

    def audit(
        self, line: str | None = None, limit: int = 100, action: str | None = None, before_id: int | None = None
    ) -> list[AuditEntry]:
        """Audit rows, newest first.

        Args:
            line: Only this line's rows.
            limit: At most this many rows.
            action: Only this action (e.g. ``inspect``).
            before_id: Only rows older than this id (for paging).
        """
        clauses, values = [], []
        for clause, value in (("line = ?", line), ("action = ?", action), ("id < ?", before_id)):
            if value is not None:
                clauses.append(clause)
                values.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM audit_log {where} ORDER BY id DESC LIMIT ?", (*values, int(limit))
            ).fetchall()
        return [AuditEntry(**{**dict(row), "details": json.loads(row["details"])}) for row in rows]

    def audit_rows(self, after_id: int = 0, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every audit row as stored (``details`` parsed), oldest first, read in batches."""
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT * FROM audit_log WHERE id > ? ORDER BY id LIMIT ?", (after_id, batch)
                ).fetchall()
            for row in rows:
                try:
                    details = json.loads(row["details"])
                except (ValueError, TypeError):  # tampered with: kept as found, so verify can name the row
                    details = row["details"]
                yield {**dict(row), "details": details}
            if len(rows) < batch:
                return
            after_id = int(rows[-1]["id"])

    def verify_audit_chain(self) -> ChainReport:
        """Walk the audit log's hash chain and name the first row that no longer matches."""
        with self._lock:
            issued = self._db.audit_ids_issued()
        return verify_rows(self.audit_rows(), issued)

    def integrity_check(self) -> str:
        """The database's consistency check (SQLite's ``PRAGMA integrity_check``): ``ok`` when sound."""
        with self._lock:
            return self._db.integrity_check()


def _inspection_details(item: InspectionRecord) -> dict[str, Any]:
    """An inspection's audit details: scores, normalities and, when decided, the verdict fields."""
    details = asdict(item)
    decision = details.pop("decision")
    if decision:
        details.update(decision)
    return details


def _normality(row: Any) -> NormalityRecord:
    return NormalityRecord(
        name=row["name"],
        text=row["text"],
        strength=row["strength"],
        phrases=json.loads(row["phrases"]),
        embedding=row["embedding"],
        embedding_backbone=row["embedding_backbone"],
        added_at=row["added_at"],
        added_by=row["added_by"],
        state=row["state"],
        until=row["until"],
        limits=json.loads(row["limits"]) if row["limits"] else None,
        kind=row["kind"],
        memory=row["memory"],
        sources=json.loads(row["sources"]) if row["sources"] else [],
    )
