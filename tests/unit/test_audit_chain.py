"""The audit log is hash-chained: editing any field of any row, or deleting a row, is found at that row.

Every test that takes ``registry_location`` runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path

import pytest

from helpers.registry_backends import raw_rows, refused_error, tamper
from normadd.registry.audit_chain import GENESIS, row_hash, verify_rows
from normadd.registry.schema import MIGRATIONS
from normadd.registry.store import InspectionRecord, LineRecord, NormalityRecord, Registry


def _filled(location: str) -> Registry:
    registry = Registry(location)
    registry.create_line(LineRecord("line-1", "bottle", backbone="tiny-random"), "alice", "new line")
    registry.add_normality("line-1", NormalityRecord("scratch", "scratch", 0.5, ["scratched bottle"]), "alice", "ok")
    inspections = [InspectionRecord(f"{i:064x}", 0.9, 0.4, [], f"{i}.png") for i in range(3)]
    registry.record_inspections("line-1", inspections, "station-1")
    registry.remove_normality("line-1", "scratch", "bob", "revoked")
    return registry


def test_every_row_links_to_the_one_before_and_the_chain_verifies(registry_location: str) -> None:
    with _filled(registry_location) as registry:
        rows = list(registry.audit_rows())
        report = registry.verify_audit_chain()
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["prev_hash"] == GENESIS
    assert all(later["prev_hash"] == earlier["row_hash"] for earlier, later in itertools.pairwise(rows))
    assert report.ok and report.rows == 6 and report.head_id == 6 and report.head_hash == rows[-1]["row_hash"]


@pytest.mark.parametrize("field", ["at", "line", "action", "who", "why", "details", "prev_hash", "row_hash", "id"])
@pytest.mark.parametrize("row_id", [1, 4, 6])
def test_editing_any_field_of_any_row_is_found_at_that_row(registry_location: str, field: str, row_id: int) -> None:
    path = registry_location
    _filled(path).close()
    value: object = {
        "details": json.dumps({"score_before": 0.1}),
        "prev_hash": "f" * 64,
        "row_hash": "e" * 64,
        "id": 100 + row_id,
    }.get(field, "edited")
    tamper(path, f"UPDATE audit_log SET {field} = ? WHERE id = ?", value, row_id)
    with Registry(path) as registry:
        finding = registry.verify_audit_chain().finding
    assert finding is not None and finding.row_id == row_id, finding


@pytest.mark.parametrize("row_id", [1, 3, 6])
def test_deleting_a_row_is_found_even_the_newest(registry_location: str, row_id: int) -> None:
    path = registry_location
    _filled(path).close()
    tamper(path, "DELETE FROM audit_log WHERE id = ?", row_id)
    with Registry(path) as registry:
        finding = registry.verify_audit_chain().finding
    assert finding is not None and finding.row_id == row_id and "deleted" in finding.problem, finding


def test_a_row_rewritten_with_a_fresh_hash_breaks_the_next_link(registry_location: str) -> None:
    path = registry_location
    _filled(path).close()
    [row] = raw_rows(path, "SELECT * FROM audit_log WHERE id = 3")
    row["who"] = "mallory"
    tamper(path, "UPDATE audit_log SET who = ?, row_hash = ? WHERE id = 3", "mallory", row_hash(row, row["prev_hash"]))
    with Registry(path) as registry:
        finding = registry.verify_audit_chain().finding
    assert finding is not None and finding.row_id == 4 and "does not link to row 3" in finding.problem


def test_rows_written_after_a_deletion_still_show_the_gap(registry_location: str) -> None:
    path = registry_location
    _filled(path).close()
    tamper(path, "DELETE FROM audit_log WHERE id = 6")
    with Registry(path) as registry:
        registry.record("line-1", "note", "alice")
        finding = registry.verify_audit_chain().finding
    assert finding is not None and finding.row_id == 6


def test_a_database_from_before_the_chain_gets_its_rows_chained_on_opening(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path, isolation_level=None) as db:
        db.executescript(MIGRATIONS[0].sqlite)  # type: ignore[union-attr]
        db.execute("PRAGMA user_version = 1")
        for i in range(1, 4):
            db.execute(
                "INSERT INTO audit_log (at, line, action, who, why, details) VALUES (?, 'l', 'inspect', 's', '', ?)",
                (f"2026-01-0{i}T00:00:00.000+00:00", json.dumps({"n": i})),
            )
    with Registry(path) as registry:
        assert registry.verify_audit_chain().ok
        registry.record("l", "note", "alice")
        report = registry.verify_audit_chain()
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            registry._db.execute("UPDATE audit_log SET who = 'x' WHERE id = 1")
    assert report.ok and report.rows == 4


def test_verify_rows_checks_an_exported_list_too() -> None:
    rows, prev = [], GENESIS
    for i in range(1, 4):
        row = {"id": i, "at": "t", "line": "l", "action": "a", "who": "w", "why": "", "details": {"i": i}}
        row["prev_hash"], row["row_hash"] = prev, row_hash(row, prev)
        prev = row["row_hash"]
        rows.append(row)
    assert verify_rows(rows).ok
    rows[1]["details"] = {"i": 20}
    assert verify_rows(rows).finding.row_id == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET who = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"])
def test_the_database_itself_refuses_to_change_audit_rows(registry_location: str, statement: str) -> None:
    """Outside normadd too: a plain client of the database cannot change, delete or (PostgreSQL) truncate rows."""
    if statement.startswith("TRUNCATE") and not registry_location.startswith("postgresql"):
        pytest.skip("SQLite has no TRUNCATE (DELETE covers it)")
    _filled(registry_location).close()
    with pytest.raises(refused_error(registry_location), match="append-only"):
        raw_rows(registry_location, statement)
    with Registry(registry_location) as registry:
        report = registry.verify_audit_chain()
    assert report.ok and report.rows == 6
