"""The registry: product lines, their active normalities and the audit log in one SQLite file.

Every change is one ``BEGIN IMMEDIATE … COMMIT`` transaction that writes the change *and* its
audit row, so a crash leaves either both or neither. WAL journaling with ``synchronous=FULL``
makes a committed transaction survive the process being killed (and power loss). Nothing here
imports torch: ``f_add`` is kept as float32 bytes and turned into a tensor by the caller.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from normadd.errors import NormaddError
from normadd.registry.errors import (
    DuplicateNormalityError,
    LineExistsError,
    LineNotFoundError,
    NormalityNotFoundError,
)
from normadd.registry.schema import migrate

DEFAULT_DATABASE = Path("normadd.db")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


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
        limits: Acceptance limits (``max_area``, ``max_length``, ``region``), or None.
    """

    name: str
    text: str
    strength: float
    phrases: list[str] = field(default_factory=list)
    embedding: bytes | None = None
    embedding_backbone: str | None = None
    added_at: str = ""
    added_by: str = ""
    limits: dict[str, Any] | None = None


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
        action: ``line.create``, ``normality.add``, ``normality.remove``, ``threshold.set``,
            ``threshold.clear`` or ``inspect``.
        who: The person or API key name that did it.
        why: The reason given ("" when none).
        details: What changed or what was inspected.
    """

    id: int
    at: str
    line: str
    action: str
    who: str
    why: str
    details: dict[str, Any]


class Registry:
    """The SQLite store of one deployment. Thread-safe; one connection per instance.

    Args:
        path: Database file, created (with its folder) when missing.
        timeout: Seconds to wait for another process's write lock.

    Raises:
        NormaddError: The file cannot be opened as a SQLite database.
    """

    def __init__(self, path: str | Path = DEFAULT_DATABASE, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            migrate(self._db)
        except sqlite3.DatabaseError as error:
            raise NormaddError(f"registry {self.path} cannot be opened ({error}): is it a normadd database?") from None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside commits together or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _audit(
        self, db: sqlite3.Connection, line: str, action: str, who: str, why: str, details: dict[str, Any]
    ) -> int:
        cursor = db.execute(
            "INSERT INTO audit_log (at, line, action, who, why, details) VALUES (?, ?, ?, ?, ?, ?)",
            (_now(), line, action, who or "unknown", why or "", json.dumps(details, sort_keys=True)),
        )
        return int(cursor.lastrowid or 0)

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
        """Make a normality active on a line and log it; returns it with ``added_at/by`` set.

        Raises:
            LineNotFoundError: No such line.
            DuplicateNormalityError: A normality of that name is already active there.
        """
        self.line(line)
        normality.added_at, normality.added_by = _now(), who or "unknown"
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM normalities WHERE line = ? AND name = ?", (line, normality.name)).fetchone():
                raise DuplicateNormalityError(
                    f"normality '{normality.name}' is already active on line '{line}': remove it first to change it"
                )
            db.execute(
                "INSERT INTO normalities (line, name, text, strength, phrases, embedding, embedding_backbone, "
                "added_at, added_by, limits) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    json.dumps(normality.limits, sort_keys=True) if normality.limits else None,
                ),
            )
            details = {
                "name": normality.name,
                "text": normality.text,
                "strength": normality.strength,
                "phrases": normality.phrases,
            }
            if normality.limits:
                details["limits"] = normality.limits
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
                known = [r[0] for r in db.execute("SELECT name FROM normalities WHERE line = ?", (line,))]
                raise NormalityNotFoundError(
                    f"no active normality named '{name}' on line '{line}' (active: {', '.join(known) or 'none'})"
                )
            db.execute("DELETE FROM normalities WHERE line = ? AND name = ?", (line, name))
            removed = _normality(row)
            details = {"name": removed.name, "text": removed.text, "strength": removed.strength}
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

    def normalities(self, line: str) -> list[NormalityRecord]:
        """The active normalities of a line, oldest first.

        Raises:
            LineNotFoundError: No such line.
        """
        self.line(line)
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM normalities WHERE line = ? ORDER BY added_at, rowid", (line,)
            ).fetchall()
        return [_normality(row) for row in rows]

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
                "INSERT OR REPLACE INTO thresholds (line, value, scale, method, details, set_at, set_by, why) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``ok`` when sound)."""
        with self._lock:
            return "; ".join(row[0] for row in self._db.execute("PRAGMA integrity_check"))


def _inspection_details(item: InspectionRecord) -> dict[str, Any]:
    """An inspection's audit details: scores, normalities and, when decided, the verdict fields."""
    details = asdict(item)
    decision = details.pop("decision")
    if decision:
        details.update(decision)
    return details


def _normality(row: sqlite3.Row) -> NormalityRecord:
    return NormalityRecord(
        name=row["name"],
        text=row["text"],
        strength=row["strength"],
        phrases=json.loads(row["phrases"]),
        embedding=row["embedding"],
        embedding_backbone=row["embedding_backbone"],
        added_at=row["added_at"],
        added_by=row["added_by"],
        limits=json.loads(row["limits"]) if row["limits"] else None,
    )
