"""``normadd change``, ``normadd audit verify|export`` and ``normadd key new`` on a registry file."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normadd.cli import app
from normadd.registry.store import NormalityRecord, Registry
from normadd.serve.authority import parse_scopes, secret_matches

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def db(tmp_path: Path) -> str:
    config = tmp_path / "line.yaml"
    config.write_text("class_name: bottle\nbackbone: tiny-random\napproval: required\n")
    path = str(tmp_path / "normadd.db")
    code, out = _run("line", "create", "line-1", "--config", str(config), "--db", path, "--who", "admin")
    assert code == 0, out
    assert "acting as admin" in out
    return path


def test_a_change_on_an_approval_line_waits_for_a_second_person(db: str) -> None:
    code, out = _run("normality", "add", "line-1", "scratch", "--db", db, "--who", "alice", "--why", "CAPA-1")
    assert code == 0 and "needs approval: proposed change 1" in out, out
    code, out = _run("normality", "list", "line-1", "--db", db)
    assert "scratch" not in out
    code, out = _run("change", "approve", "1", "--db", db, "--who", "alice")
    assert code == 2 and "cannot approve it" in out
    code, out = _run("change", "approve", "1", "--db", db, "--who", "bob")
    assert code == 0 and "proposed by alice, approved by bob" in out, out
    code, out = _run("normality", "list", "line-1", "--db", db)
    assert "scratch" in out and "alice" in out
    code, out = _run("normality", "remove", "line-1", "scratch", "--db", db, "--who", "bob")
    assert "proposed change 2" in out
    code, out = _run("change", "reject", "2", "--db", db, "--who", "alice")
    assert code == 2  # --why is required
    code, out = _run("change", "reject", "2", "--db", db, "--who", "alice", "--why", "keep it")
    assert code == 0 and "rejected change 2" in out
    code, out = _run("change", "list", "--status", "all", "--db", db)
    assert "approved" in out and "rejected" in out
    code, out = _run("audit", "line-1", "--db", db, "--json")
    actions = [(e["action"], e["who"]) for e in map(json.loads, out.splitlines())]
    assert actions[:4] == [
        ("change.reject", "alice"),
        ("change.propose", "bob"),
        ("change.approve", "bob"),
        ("normality.add", "alice"),
    ]


def test_audit_verify_names_the_edited_row_and_export_carries_the_chain(db: str, tmp_path: Path) -> None:
    _run("normality", "add", "line-1", "scratch", "--db", db, "--who", "alice")
    code, out = _run("audit", "verify", "--db", db)
    assert code == 0 and "audit chain ok: 2 rows" in out, out
    head = out.split("sha256")[-1].split()[0]
    exported = {}
    for kind in ("jsonl", "csv"):
        exported[kind] = tmp_path / f"audit.{kind}"
        code, out = _run("audit", "export", "--format", kind, "--output", str(exported[kind]), "--db", db)
        assert code == 0 and "exported 2 audit rows (chain ok)" in out, out
        code, out = _run("audit", "verify", "--file", str(exported[kind]), "--expect-head", head)
        assert code == 0 and "audit chain ok: 2 rows" in out, out
    rows = list(csv.DictReader(exported["csv"].open()))
    assert [r["action"] for r in rows] == ["line.create", "change.propose"]
    assert rows[1]["prev_hash"] == rows[0]["row_hash"]

    with sqlite3.connect(db) as connection:
        connection.execute("DROP TRIGGER audit_log_no_update")
        connection.execute("UPDATE audit_log SET why = 'edited' WHERE id = 2")
    code, out = _run("audit", "verify", "--db", db)
    assert code == 1 and "audit row 2: does not match its hash" in out, out
    lines = exported["jsonl"].read_text().splitlines()
    exported["jsonl"].write_text("\n".join(lines[1:]) + "\n")
    code, out = _run("audit", "verify", "--file", str(exported["jsonl"]))
    assert code == 1 and "audit row 1: missing" in out, out
    code, out = _run("audit", "export", "--format", "xml", "--db", db)
    assert code == 2 and "use jsonl or csv" in out


def test_key_new_prints_a_secret_once_and_the_hash_the_config_keeps() -> None:
    code, out = _run("key", "new", "station-7", "--scopes", "inspect")
    assert code == 0, out
    secret = out.split("stored anywhere): ")[1].split()[0]
    stored = out.split('secret_hash: "')[1].split('"')[0]
    assert secret_matches(secret, stored) and secret not in out.split("service config:")[1]
    code, out = _run("key", "new", "x", "--scopes", "inspect,deploy")
    assert code == 2 and "unknown scopes ['deploy']" in out
    assert parse_scopes("inspect+change", "k") == {"inspect", "change"}


def test_turning_approval_off_needs_approval_itself(tmp_path: Path) -> None:
    path = str(tmp_path / "normadd.db")
    _run("line", "create", "line-2", "-c", "bottle", "--backbone", "tiny-random", "--db", path)
    code, out = _run("line", "approval", "line-2", "required", "--expires-hours", "12", "--db", path, "--who", "qa")
    assert code == 0 and "approval required" in out, out
    code, out = _run("line", "approval", "line-2", "none", "--db", path, "--who", "alice", "--why", "trial over")
    assert code == 0 and "proposed change 1 (set approval=none)" in out, out
    code, out = _run("change", "approve", "1", "--db", path, "--who", "qa")
    assert code == 0, out
    code, out = _run("normality", "add", "line-2", "scratch", "--db", path, "--who", "alice")
    assert code == 0 and "added normality 'scratch'" in out, out
    code, out = _run("audit", "line-2", "--db", path, "--json", "--action", "line.settings")
    changed = [json.loads(line)["details"] for line in out.splitlines()]
    assert changed == [
        {"changes": {"approval": "none"}, "before": {"approval": "required"}},
        {
            "changes": {"approval": "required", "approval_expires_hours": 12.0},
            "before": {"approval": None, "approval_expires_hours": None},
        },
    ]
    code, out = _run("line", "approval", "line-2", "sometimes", "--db", path)
    assert code == 2 and "use required or none" in out


def test_thresholds_and_activation_are_proposed_on_an_approval_line(db: str) -> None:
    code, out = _run("line", "set-threshold", "line-1", "0.25", "--db", db, "--who", "alice", "--why", "by hand")
    assert code == 0 and "proposed change 1 (set threshold 0.25)" in out, out
    code, out = _run("line", "show", "line-1", "--db", db)
    assert "verdicts undecided" in out
    code, out = _run("line", "clear-threshold", "line-1", "--db", db, "--who", "alice")
    assert code == 2 and "nothing to clear" in out, out
    assert _run("change", "approve", "1", "--db", db, "--who", "bob")[0] == 0
    code, out = _run("line", "show", "line-1", "--db", db)
    assert "0.25 (NG when a score is above it)" in out and "by alice" in out, out
    code, out = _run("line", "clear-threshold", "line-1", "--db", db, "--who", "alice")
    assert code == 0 and "proposed change 2 (clear threshold (now 0.25))" in out, out
    assert _run("change", "approve", "2", "--db", db, "--who", "bob")[0] == 0
    assert "verdicts undecided" in _run("line", "show", "line-1", "--db", db)[1]

    with Registry(db) as registry:  # a staged normality (staging itself is proposed like any add)
        record = NormalityRecord("smudge", "smudge", 1.0, ["smudged label"], None, None, state="staged")
        registry.add_normality("line-1", record, "alice")
    code, out = _run("normality", "activate", "line-1", "smudge", "--db", db, "--who", "alice")
    assert code == 0 and "proposed change 3 (activate normality 'smudge')" in out, out
    with Registry(db) as registry:
        assert registry.normalities("line-1") == []
    code, out = _run("change", "approve", "3", "--db", db, "--who", "bob")
    assert code == 0, out
    with Registry(db) as registry:
        assert [n.name for n in registry.normalities("line-1")] == ["smudge"]
    code, out = _run("normality", "activate", "line-1", "smudge", "--db", db, "--who", "alice")
    assert code == 2 and "is active, not staged" in out, out


def test_an_example_normality_on_an_approval_line_waits_for_a_second_person(db: str, bottle_dir: Path) -> None:
    image = bottle_dir / "test" / "broken_large" / "000.png"
    code, out = _run("normality", "add-example", "line-1", str(image), "--db", db, "--who", "alice", "--why", "CAPA-3")
    assert code == 0 and "needs approval: proposed change 1" in out, out
    code, out = _run("normality", "list", "line-1", "--db", db)
    assert "example:000" not in out
    code, out = _run("change", "approve", "1", "--db", db, "--who", "bob")
    assert code == 0 and "proposed by alice, approved by bob" in out, out
    with Registry(Path(db)) as registry:
        (stored,) = registry.normalities("line-1")
        assert registry.verify_audit_chain().ok
    assert (stored.name, stored.kind, stored.added_by) == ("example:000", "visual", "alice")
    assert stored.memory and stored.sources[0]["image"] == "000.png"


def test_change_and_audit_commands_show_user_text_as_typed(db: str) -> None:
    why = "[red]CAPA[/red] \x1b[2Jcleared"
    code, out = _run("normality", "add", "line-1", "scratch", "--db", db, "--who", "[b]eve[/b]", "--why", why)
    assert code == 0, out
    wide = {"COLUMNS": "400"}
    for args in (("change", "list", "--db", db), ("audit", "line-1", "--db", db)):
        result = runner.invoke(app, [*args], env=wide)
        assert result.exit_code == 0, result.output
        assert "[red]CAPA[/red]" in result.output and "[b]eve[/b]" in result.output, result.output
        assert "\x1b" not in result.output and "\\x1b[2Jcleared" in result.output, result.output
    result = runner.invoke(app, ["change", "reject", "1", "--db", db, "--who", "bob", "--why", "[i]no[/i]\x07"])
    assert result.exit_code == 0 and "[i]no[/i]\\x07" in result.output and "\x07" not in result.output, result.output


def test_calibrate_on_an_approval_line_proposes_the_threshold(db: str, bottle_dir: Path, tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    for image in sorted((bottle_dir / "train" / "good").glob("*.png"))[:3]:
        shutil.copy(image, good / image.name)
    args = ("calibrate", "line-1", "--good", str(good), "--false-reject", "0.5", "--db", db, "--device", "cpu")
    code, out = _run(*args, "--who", "alice", "--why", "CAPA-4")
    assert code == 0 and "needs approval: proposed change 1" in out and "set threshold" in out, out
    with Registry(Path(db)) as registry:
        assert registry.threshold("line-1") is None
    code, out = _run("change", "approve", "1", "--db", db, "--who", "bob")
    assert code == 0, out
    with Registry(Path(db)) as registry:
        stored = registry.threshold("line-1")
        assert stored is not None and stored.set_by == "alice"
