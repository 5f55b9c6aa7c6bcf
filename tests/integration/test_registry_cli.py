"""``normadd line``, ``normadd normality`` and ``normadd audit`` on a registry file."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from normadd.cli import app

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_a_quality_engineer_traces_who_made_a_defect_normal(tmp_path: Path) -> None:
    db = str(tmp_path / "normadd.db")
    code, out = _run("line", "create", "line-1", "-c", "bottle", "--backbone", "tiny-random", "--db", db)
    assert code == 0, out
    code, out = _run(
        "normality", "add", "line-1", "scratch", "--strength", "0.5", "--db", db, "--who", "alice", "--why", "ok'd"
    )
    assert code == 0, out
    assert "scratched bottle" in out
    code, out = _run("normality", "list", "line-1", "--db", db)
    assert code == 0 and "scratch" in out and "alice" in out
    code, out = _run("line", "show", "line-1", "--db", db)
    assert code == 0 and "tiny-random" in out
    code, out = _run("normality", "remove", "line-1", "scratch", "--db", db, "--who", "bob", "--why", "revoked")
    assert code == 0, out
    code, out = _run("audit", "line-1", "--db", db, "--json")
    entries = [json.loads(line) for line in out.splitlines()]
    assert [(e["action"], e["who"], e["why"]) for e in entries] == [
        ("normality.remove", "bob", "revoked"),
        ("normality.add", "alice", "ok'd"),
        ("line.create", entries[2]["who"], ""),
    ]


def test_line_create_from_a_config_activates_its_normalities(tmp_path: Path) -> None:
    config = tmp_path / "line.yaml"
    config.write_text("class_name: bottle\nbackbone: tiny-random\nnormalities:\n  - broken:0.7\n")
    db = str(tmp_path / "normadd.db")
    code, out = _run("line", "create", "line-2", "--config", str(config), "--db", db)
    assert code == 0, out
    code, out = _run("normality", "list", "line-2", "--db", db)
    assert "broken" in out and "0.7" in out


def test_registry_mistakes_are_one_line_and_exit_code_2(tmp_path: Path) -> None:
    db = str(tmp_path / "normadd.db")
    _run("line", "create", "line-1", "-c", "bottle", "--backbone", "tiny-random", "--db", db)
    for args, words in [
        (("normality", "list", "line-9", "--db", db), "no product line named 'line-9'"),
        (("normality", "remove", "line-1", "dent", "--db", db), "no normality named 'dent'"),
        (("line", "create", "line-1", "-c", "bottle", "--db", db), "already exists"),
        (("normality", "add", "line-1", " ", "--db", db), "normality text is empty"),
    ]:
        code, out = _run(*args)
        assert code == 2, out
        assert "Traceback" not in out and words in out, out
