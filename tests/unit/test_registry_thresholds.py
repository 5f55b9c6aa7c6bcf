"""The registry keeps one threshold per line, with who/when/why, and migrates older databases.

The ``registry`` fixture runs those tests on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from normadd.decisions import DecisionError
from normadd.registry.database import _split_sqlite_statements
from normadd.registry.errors import LineNotFoundError
from normadd.registry.schema import MIGRATIONS, SCHEMA_VERSION
from normadd.registry.store import LineRecord, NormalityRecord, Registry, ThresholdRecord


@pytest.fixture
def registry(registry_location: str) -> Registry:
    store = Registry(registry_location)
    store.create_line(LineRecord("line-1", "bottle", backbone="tiny-random"), "alice", "new line")
    return store


def test_a_line_has_no_threshold_until_one_is_set(registry: Registry) -> None:
    assert registry.threshold("line-1") is None


def test_setting_a_threshold_stores_it_with_its_scale_and_logs_who_when_why(registry: Registry) -> None:
    scale = {"detector": "aprilgan", "backbone": "tiny-random"}
    record = ThresholdRecord(0.42, scale, "false-reject", {"false_reject": 0.01})
    registry.set_threshold("line-1", record, "bob", "fr 1%")
    stored = registry.threshold("line-1")
    assert stored is not None
    assert (stored.value, stored.scale, stored.method) == (0.42, scale, "false-reject")
    assert (stored.set_by, stored.why) == ("bob", "fr 1%")
    assert stored.set_at
    entry = registry.audit("line-1", action="threshold.set")[0]
    assert (entry.who, entry.why, entry.details["value"], entry.details["previous"]) == ("bob", "fr 1%", 0.42, None)
    assert entry.details["false_reject"] == 0.01


def test_a_new_threshold_replaces_the_old_and_the_log_keeps_both(registry: Registry) -> None:
    registry.set_threshold("line-1", ThresholdRecord(0.4), "bob")
    registry.set_threshold("line-1", ThresholdRecord(0.5), "carol", "fewer false rejects")
    assert registry.threshold("line-1").value == 0.5  # type: ignore[union-attr]
    entries = registry.audit("line-1", action="threshold.set")
    assert [e.details["value"] for e in entries] == [0.5, 0.4]
    assert entries[0].details["previous"] == 0.4


@pytest.mark.parametrize("bad", [float("nan"), -1.0, "high"])
def test_a_bad_threshold_is_refused_and_nothing_changes(registry: Registry, bad: object) -> None:
    registry.set_threshold("line-1", ThresholdRecord(0.4), "bob")
    before = len(registry.audit("line-1"))
    with pytest.raises(DecisionError):
        registry.set_threshold("line-1", ThresholdRecord(bad), "mallory")  # type: ignore[arg-type]
    assert registry.threshold("line-1").value == 0.4  # type: ignore[union-attr]
    assert len(registry.audit("line-1")) == before


def test_a_threshold_for_an_unknown_line_names_the_known_ones(registry: Registry) -> None:
    with pytest.raises(LineNotFoundError, match="line-1"):
        registry.set_threshold("nope", ThresholdRecord(0.4), "bob")


def test_clearing_a_threshold_is_logged(registry: Registry) -> None:
    registry.set_threshold("line-1", ThresholdRecord(0.4), "bob")
    registry.clear_threshold("line-1", "bob", "detector retrained")
    assert registry.threshold("line-1") is None
    assert registry.audit("line-1", action="threshold.clear")[0].details == {"previous": 0.4}


def test_normality_limits_are_stored_and_logged(registry: Registry) -> None:
    limits = {"max_area": "4 mm2", "region": "label.png"}
    registry.add_normality("line-1", NormalityRecord("scratch", "scratch", 1.0, limits=limits), "bob")
    assert registry.normalities("line-1")[0].limits == limits
    assert registry.audit("line-1", action="normality.add")[0].details["limits"] == limits


def test_a_version_1_database_is_migrated_and_keeps_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for statement in _split_sqlite_statements(MIGRATIONS[0].sqlite):  # type: ignore[union-attr]
        if statement.strip(" ;\n"):
            db.execute(statement)
    db.execute(
        "INSERT INTO lines (name, class_name, detector, backbone, phrase_generator, created_at) "
        "VALUES ('old', 'bottle', 'aprilgan', 'tiny-random', 'offline', '2026-01-01')"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with Registry(path) as store:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.line("old").class_name == "bottle"
        assert store.threshold("old") is None
        store.set_threshold("old", ThresholdRecord(0.3), "bob")
        assert store.threshold("old").value == 0.3  # type: ignore[union-attr]


def test_a_line_created_from_a_config_with_a_threshold_stores_it_for_that_detector(tmp_path: Path) -> None:
    from normadd.config import LineConfig
    from normadd.decisions.scale import score_scale
    from normadd.registry.line_model import create_line, line_record

    config = LineConfig(class_name="bottle", backbone="tiny-random", threshold=0.7, pixel_size_mm=0.05)
    with Registry(tmp_path / "r.db") as store:
        create_line(store, "from-yaml", config, "alice")
        stored = store.threshold("from-yaml")
        assert stored is not None and (stored.value, stored.method) == (0.7, "config")
        assert stored.scale == score_scale(config)  # a bare YAML threshold is meant for the config it is in
        assert "threshold" not in store.line("from-yaml").settings  # kept in its own table
        assert store.line("from-yaml").settings["pixel_size_mm"] == 0.05
        assert line_record("from-yaml", config).settings == {
            "pixel_size_mm": 0.05,
            "shots": 0,
            "resize": "squash",
            "image_score": "max",
            "coreset": "exact",
        }
