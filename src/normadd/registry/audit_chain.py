"""The audit log's hash chain: each row's SHA-256 covers its canonical JSON and the previous row's hash.

Pure functions on plain rows (mappings with ``id, at, line, action, who, why, details``), so the
same code checks the SQLite file, another backend, or an exported JSONL file. Changing any field
of a row breaks that row's hash; deleting a row breaks the next row's link (or, for the newest
rows, leaves a gap behind the highest id the database ever issued). Someone who can rewrite the
whole database can also recompute every hash after the row they changed: the chain head
(:func:`head`) kept outside the database, e.g. in an exported file, is what catches that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64  # the "previous hash" of the first row
HASHED_FIELDS = ("id", "at", "line", "action", "who", "why", "details")


def canonical_json(row: Mapping[str, Any]) -> str:
    """The row's hashed fields as canonical JSON (sorted keys, no spaces, UTF-8 kept as is)."""
    details = row["details"]
    if isinstance(details, str | bytes):  # as stored: parse, so formatting differences between backends do not count
        details = json.loads(details)
    data = {name: row[name] for name in HASHED_FIELDS if name != "details"}
    data["id"] = int(data["id"])
    data["details"] = details
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_hash(row: Mapping[str, Any], prev_hash: str) -> str:
    """SHA-256 (hex) of the previous row's hash and this row's canonical JSON."""
    return hashlib.sha256(f"{prev_hash}\n{canonical_json(row)}".encode()).hexdigest()


@dataclass(frozen=True)
class ChainFinding:
    """The first place the chain does not hold.

    Attributes:
        row_id: The first row that no longer matches (or the first id missing).
        problem: What is wrong, in one sentence.
    """

    row_id: int
    problem: str

    def __str__(self) -> str:
        return f"audit row {self.row_id}: {self.problem}"


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify_rows` found.

    Attributes:
        rows: How many rows were checked.
        head_id: Id of the last row checked (0 when none).
        head_hash: Its hash (:data:`GENESIS` when none): record it to detect a rewrite later.
        finding: The first break, or None when the chain holds.
    """

    rows: int
    head_id: int
    head_hash: str
    finding: ChainFinding | None

    @property
    def ok(self) -> bool:
        """True when every row matched."""
        return self.finding is None


def verify_rows(rows: Iterable[Mapping[str, Any]], last_issued_id: int | None = None) -> ChainReport:
    """Walk rows in id order and name the first one that no longer matches.

    Args:
        rows: Audit rows with their ``prev_hash`` and ``row_hash``, oldest first, starting at the
            first row ever written.
        last_issued_id: The highest id the database ever handed out, when it knows it (SQLite's
            AUTOINCREMENT counter): rows after the last one found were deleted if it is higher.
    """
    count, expected_id, prev_id, prev = 0, 1, 0, GENESIS
    for row in rows:
        row_id = int(row["id"])
        if row_id != expected_id:
            missing = f"{expected_id}" if row_id == expected_id + 1 else f"{expected_id}-{row_id - 1}"
            return ChainReport(count, prev_id, prev, ChainFinding(expected_id, f"missing: row(s) {missing} deleted"))
        if row.get("row_hash") is None:
            return ChainReport(count, prev_id, prev, ChainFinding(row_id, "has no hash: it was written around the log"))
        if row.get("prev_hash") != prev:
            return ChainReport(
                count,
                prev_id,
                prev,
                ChainFinding(row_id, f"does not link to row {prev_id}: a row before it was changed or replaced"),
            )
        try:
            expected = row_hash(row, prev)
        except (ValueError, TypeError, KeyError) as error:
            return ChainReport(count, prev_id, prev, ChainFinding(row_id, f"cannot be read ({error}): it was changed"))
        if expected != row["row_hash"]:
            return ChainReport(
                count, prev_id, prev, ChainFinding(row_id, "does not match its hash: a field was changed after writing")
            )
        count, expected_id, prev_id, prev = count + 1, row_id + 1, row_id, str(row["row_hash"])
    if last_issued_id is not None and last_issued_id > prev_id:
        gone = f"{prev_id + 1}" if last_issued_id == prev_id + 1 else f"{prev_id + 1}-{last_issued_id}"
        return ChainReport(
            count, prev_id, prev, ChainFinding(prev_id + 1, f"missing: the newest row(s) {gone} were deleted")
        )
    return ChainReport(count, prev_id, prev, None)
