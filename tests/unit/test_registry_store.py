"""The registry keeps lines, active normalities and an append-only audit log, in SQLite or PostgreSQL.

Every test that takes ``registry`` or ``registry_location`` runs on both backends.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from helpers.registry_backends import raw_rows, refused_error
from normadd.errors import NormaddError
from normadd.registry.errors import (
    DuplicateNormalityError,
    LineExistsError,
    LineNotFoundError,
    NormalityNotFoundError,
    SchemaVersionError,
)
from normadd.registry.schema import SCHEMA_VERSION
from normadd.registry.store import InspectionRecord, LineRecord, NormalityRecord, Registry


@pytest.fixture
def registry(registry_location: str) -> Registry:
    store = Registry(registry_location)
    store.create_line(LineRecord("line-1", "bottle", backbone="tiny-random"), "alice", "new line")
    return store


def _scratch(strength: float = 0.5) -> NormalityRecord:
    return NormalityRecord("scratch", "scratch", strength, ["scratched bottle"], b"\x00" * 16, "tiny-random|x")


def test_a_new_database_is_at_the_latest_schema_version_in_wal_mode(tmp_path: Path) -> None:
    with Registry(tmp_path / "new.db") as store:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_new_postgresql_database_is_at_the_latest_schema_version(postgres_url: str) -> None:
    with Registry(postgres_url) as store:
        assert (store.dialect, store._db.schema_version()) == ("postgresql", SCHEMA_VERSION)
    assert raw_rows(postgres_url, "SELECT version FROM normadd_schema") == [{"version": SCHEMA_VERSION}]


def test_reopening_a_database_keeps_its_content(registry: Registry) -> None:
    registry.add_normality("line-1", _scratch(), "alice", "accepted by the customer")
    registry.close()
    with Registry(registry.location) as reopened:
        assert [n.name for n in reopened.normalities("line-1")] == ["scratch"]
        assert reopened.normalities("line-1")[0].embedding == b"\x00" * 16


def test_a_database_from_a_newer_normadd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    sqlite3.connect(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaVersionError, match="upgrade normadd"):
        Registry(path)


def test_a_postgresql_database_from_a_newer_normadd_is_refused_in_one_line(postgres_url: str) -> None:
    Registry(postgres_url).close()
    raw_rows(postgres_url, "UPDATE normadd_schema SET version = ?", SCHEMA_VERSION + 1)
    with pytest.raises(SchemaVersionError, match="upgrade normadd") as raised:
        Registry(postgres_url)
    message = str(raised.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message and postgres_url in message and "\n" not in message


def test_a_file_that_is_not_a_database_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database at all, just some text that is long enough " * 20)
    with pytest.raises(NormaddError, match="cannot be opened"):
        Registry(path)


def test_every_change_is_audited_with_who_and_why(registry: Registry) -> None:
    registry.add_normality("line-1", _scratch(), "alice", "accepted by the customer")
    registry.remove_normality("line-1", "scratch", "bob", "customer changed their mind")
    entries = registry.audit("line-1")
    assert [(e.action, e.who, e.why) for e in entries] == [
        ("normality.remove", "bob", "customer changed their mind"),
        ("normality.add", "alice", "accepted by the customer"),
        ("line.create", "alice", "new line"),
    ]
    assert entries[1].details["phrases"] == ["scratched bottle"]


def test_inspections_are_audited_with_image_hash_scores_and_normalities(registry: Registry) -> None:
    record = InspectionRecord("ab" * 32, 0.9, 0.2, [{"name": "scratch", "strength": 0.5}], "part-7.png")
    [audit_id] = registry.record_inspections("line-1", [record], "station-1")
    [entry] = registry.audit("line-1", action="inspect")
    assert entry.id == audit_id
    assert entry.details["image_sha256"] == "ab" * 32
    assert (entry.details["score_before"], entry.details["score_after"]) == (0.9, 0.2)
    assert entry.details["normalities"] == [{"name": "scratch", "strength": 0.5}]


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET who = 'mallory'", "DELETE FROM audit_log"])
def test_the_audit_log_cannot_be_changed_or_deleted(registry: Registry, statement: str) -> None:
    with pytest.raises(refused_error(registry.location), match="append-only"):
        registry._db.execute(statement)
    assert [e.who for e in registry.audit()] == ["alice"]


def test_a_duplicate_normality_is_refused_and_changes_nothing(registry: Registry) -> None:
    registry.add_normality("line-1", _scratch(0.5), "alice")
    before = registry.audit()
    with pytest.raises(DuplicateNormalityError, match="already active"):
        registry.add_normality("line-1", _scratch(0.9), "bob")
    assert registry.audit() == before
    assert [n.strength for n in registry.normalities("line-1")] == [0.5]


def test_unknown_line_and_normality_name_what_exists(registry: Registry) -> None:
    with pytest.raises(LineNotFoundError, match=r"known: line-1"):
        registry.normalities("line-9")
    with pytest.raises(NormalityNotFoundError, match=r"active: none"):
        registry.remove_normality("line-1", "scratch", "bob")
    with pytest.raises(LineExistsError):
        registry.create_line(LineRecord("line-1", "bottle"), "bob")


def test_a_write_that_fails_midway_leaves_nothing_behind(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_audit(*args: object) -> int:
        raise OSError("disk full")  # after the normality row is written, before its audit row

    monkeypatch.setattr(registry, "_audit", failing_audit)
    with pytest.raises(OSError, match="disk full"):
        registry.add_normality("line-1", _scratch(), "alice")
    monkeypatch.undo()
    assert registry.normalities("line-1") == []
    assert [e.action for e in registry.audit()] == ["line.create"]


def test_strength_outside_0_1_is_refused_by_the_schema(registry: Registry) -> None:
    with pytest.raises(refused_error(registry.location), match=r"(?i)check constraint"):
        registry.add_normality("line-1", _scratch(2.0), "alice")
    assert registry.normalities("line-1") == []


def test_an_older_database_gets_the_new_migrations_once_and_keeps_its_data(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normadd.registry import schema

    registry.add_normality("line-1", _scratch(), "alice")
    registry.close()
    added = "ALTER TABLE lines ADD COLUMN site TEXT NOT NULL DEFAULT 'plant-1'"
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, added))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(schema.MIGRATIONS))
    for _ in range(2):  # the second open finds nothing left to do
        with Registry(registry.location) as upgraded:
            assert upgraded._db.schema_version() == SCHEMA_VERSION + 1
            assert upgraded._db.execute("SELECT site FROM lines").fetchone()[0] == "plant-1"
            assert [row[0] for row in upgraded._db.execute("SELECT name FROM normalities")] == ["scratch"]


def _old_registry(path: Path, version: int) -> sqlite3.Connection:
    """A registry as a normadd of schema ``version`` (before the audit chain) left it, written in SQL.

    The store's own writes need today's columns (e.g. the audit chain's), so the old rows are
    written as the old code wrote them.
    """
    from normadd.registry.schema import MIGRATIONS, Dialects

    db = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:version]:
        sql = migration.sqlite if isinstance(migration, Dialects) else migration
        assert isinstance(sql, str), "the old schemas are plain SQL"
        db.executescript(sql)
    db.execute(f"PRAGMA user_version = {version}")
    db.execute(
        "INSERT INTO lines (name, class_name, detector, backbone, phrase_generator, created_at) "
        "VALUES ('line-1', 'bottle', 'aprilgan', 'tiny-random', 'template', '2026-01-01T00:00:00+00:00')"
    )
    db.execute(
        "INSERT INTO audit_log (at, line, action, who, why, details) "
        "VALUES ('2026-01-01T00:00:00+00:00', 'line-1', 'line.create', 'alice', '', '{}')"
    )
    return db


def test_a_registry_from_before_visual_normalities_keeps_its_text_ones(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with _old_registry(path, 1) as before:  # what a normadd of schema version 1 wrote
        before.execute(
            "INSERT INTO normalities (line, name, text, strength, phrases, added_at, added_by) "
            "VALUES ('line-1', 'scratch', 'scratch', 0.5, '[]', '2026-01-01', 'alice')"
        )
    before.close()
    with Registry(path) as upgraded:
        (kept,) = upgraded.normalities("line-1")
        assert upgraded.verify_audit_chain().ok  # the old rows are chained by migration 5
    assert (kept.name, kept.kind, kept.memory, kept.sources) == ("scratch", "text", None, [])


def test_a_registry_with_thresholds_and_staged_normalities_gets_the_visual_migration_and_keeps_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v3.db"
    with _old_registry(path, 3) as before:  # a registry of issues 11 and 12, before visual normalities
        before.execute(
            "INSERT INTO thresholds (line, value, method, set_at, set_by) "
            "VALUES ('line-1', 0.4, 'set', '2026-01-01T00:00:00+00:00', 'alice')"
        )
        before.execute(
            "INSERT INTO normalities (line, name, text, strength, phrases, added_at, added_by, state, until, "
            "limits) VALUES ('line-1', 'scratch', 'scratch', 0.5, '[]', '2026-01-01T00:00:00+00:00', 'alice', "
            "'staged', '2999-01-01T00:00:00+00:00', '{\"max_area\": 400}')"
        )
    before.close()
    with Registry(path) as upgraded:
        assert upgraded._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        (kept,) = upgraded.normalities("line-1", ("staged",))
        assert upgraded.threshold("line-1").value == 0.4  # type: ignore[union-attr]
        assert upgraded.verify_audit_chain().ok
    assert (kept.name, kept.state, kept.until, kept.limits) == (
        "scratch",
        "staged",
        "2999-01-01T00:00:00+00:00",
        {"max_area": 400},
    )
    assert (kept.kind, kept.memory, kept.sources) == ("text", None, [])


def test_a_visual_normality_is_stored_with_its_memory_and_audited_by_its_hashes(registry: Registry) -> None:
    sources = [{"image": "scuff.png", "sha256": "ab" * 32, "mask_sha256": None}]
    visual = NormalityRecord(
        "example:scuff",
        "examples scuff.png",
        0.7,
        embedding_backbone="tiny-random|x",
        kind="visual",
        memory=b"\x01\x02",
        sources=sources,
    )
    registry.add_normality("line-1", visual, "bob", "customer accepts scuffs")
    registry.close()
    with Registry(registry.location) as reopened:
        (stored,) = reopened.normalities("line-1")
        assert (stored.kind, stored.memory, stored.sources) == ("visual", b"\x01\x02", sources)
        reopened.remove_normality("line-1", "example:scuff", "bob")
        removed, added = reopened.audit("line-1", limit=2)
    assert added.details["kind"] == "visual" and added.details["sources"] == sources
    assert removed.details["sources"] == sources


def test_concurrent_writers_on_separate_connections_keep_one_chain_and_one_winner(registry: Registry) -> None:
    """Several processes (here: connections in threads) write at once: one add of a name wins, the
    others get the "already exists" error, and every audit row lands in one valid chain."""
    import threading

    registry.close()
    writers = [Registry(registry.location) for _ in range(4)]
    outcomes: list[str] = []
    start = threading.Barrier(len(writers))

    def write(store: Registry, index: int) -> None:
        start.wait()
        for n in range(5):
            store.record_inspections("line-1", [InspectionRecord(f"{index:032x}{n:032x}", 0.9, 0.1, [])], f"s{index}")
        try:
            store.add_normality("line-1", _scratch(), f"station-{index}")
            outcomes.append("added")
        except DuplicateNormalityError:
            outcomes.append("duplicate")

    threads = [threading.Thread(target=write, args=(store, i)) for i, store in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in writers:
        store.close()
    with Registry(registry.location) as reopened:
        report = reopened.verify_audit_chain()
        inspected = reopened.audit("line-1", limit=100, action="inspect")
    assert sorted(outcomes) == ["added", "duplicate", "duplicate", "duplicate"]
    assert report.ok and report.rows == 1 + 4 * 5 + 1, report
    assert len(inspected) == 20


def test_processes_opening_a_new_database_together_migrate_it_once(registry_location: str) -> None:
    """Replicas starting at the same moment: the migration runs under the write lock, once."""
    import threading

    start = threading.Barrier(4)
    opened: list[Registry] = []
    failures: list[BaseException] = []

    def open_registry() -> None:
        start.wait()
        try:
            opened.append(Registry(registry_location))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=open_registry) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in opened:
        store.close()
    assert not failures and len(opened) == 4
    with Registry(registry_location) as store:
        assert store._db.schema_version() == SCHEMA_VERSION
        store.create_line(LineRecord("line-2", "bottle"), "alice")
        assert [e.action for e in store.audit()] == ["line.create"]
