"""``normadd normality preview``, ``add --staged/--until``, ``activate`` and ``list`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normadd.cli import app
from normadd.registry.store import Registry

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "250"})  # wide enough for whole table cells
    return result.exit_code, result.output


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "normadd.db")
    code, out = _run("line", "create", "line-1", "-c", "bottle", "--backbone", "tiny-random", "--db", path)
    assert code == 0, out
    return path


def _snapshot(db: str) -> tuple[object, ...]:
    with Registry(db) as registry:
        stored = registry.normalities("line-1", ("active", "staged", "expired"))
        return tuple((n.name, n.state, n.until) for n in stored), registry.audit("line-1", limit=1)[0].id


def test_preview_on_image_files_stores_nothing_but_one_audit_row(db: str, bottle_dir: Path) -> None:
    before = _snapshot(db)
    folder = bottle_dir / "test" / "broken_large"
    code, out = _run(
        "normality", "preview", "line-1", "broken", "--images", str(folder / "000.png"),
        "--images", str(folder / "001.png"), "--json", "--db", db, "--who", "qa", "--why", "before go-live",
    )
    assert code == 0, out
    report = json.loads(out)
    assert report["parts"] == 2 and report["threshold"] is None and "no threshold" in report["reason"]
    assert all(item["score_after"] < item["score_before"] for item in report["items"])
    after = _snapshot(db)
    assert after[0] == before[0] and after[1] == before[1] + 1
    with Registry(db) as registry:
        entry = registry.audit("line-1", limit=1)[0]
    assert (entry.action, entry.who, entry.why) == ("normality.preview", "qa", "before go-live")
    assert entry.details["parts"] == 2


def test_staged_and_expiring_normalities_are_listed_with_state_and_until(db: str) -> None:
    code, out = _run("normality", "add", "line-1", "scratch", "--staged", "--db", db, "--why", "trial")
    assert code == 0 and "staged normality 'scratch'" in out and "normality activate" in out, out
    code, out = _run("normality", "add", "line-1", "broken", "--until", "2099-12-15T00:00Z", "--db", db)
    assert code == 0 and "until 2099-12-15T00:00:00.000+00:00" in out, out
    code, out = _run("normality", "list", "line-1", "--db", db)
    assert code == 0 and "staged" in out and "2099-12-15" in out, out
    code, out = _run("normality", "activate", "line-1", "scratch", "--db", db, "--why", "supplier agreed")
    assert code == 0 and "activated normality 'scratch'" in out, out
    code, out = _run("line", "show", "line-1", "--db", db)
    assert code == 0 and "retained" in out and "off" in out, out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("normality", "preview", "line-1", "scratch", "--recent", "10"), "retain: {images: N}"),
        (("normality", "preview", "line-1", "scratch"), "exactly one of --recent N"),
        (("normality", "add", "line-1", "scratch", "--until", "2001-01-01"), "not in the future"),
        (("normality", "add", "line-1", "scratch", "--until", "soon"), "not an ISO 8601 time"),
        (("normality", "activate", "line-1", "dent"), "no normality named 'dent'"),
        (("normality", "activate", "line-1", "broken"), "already active"),
    ],
)
def test_bad_preview_and_staging_input_is_one_line_and_changes_nothing(
    db: str, args: tuple[str, ...], words: str
) -> None:
    assert _run("normality", "add", "line-1", "broken", "--db", db)[0] == 0
    before = _snapshot(db)
    code, out = _run(*args, "--db", db)
    assert code == 2, out
    assert "Traceback" not in out and words in " ".join(out.split()), out
    assert _snapshot(db) == before


def test_preview_takes_the_acceptance_limits_of_normality_add(db: str, bottle_dir: Path) -> None:
    image = str(bottle_dir / "test" / "broken_large" / "000.png")
    base = ("normality", "preview", "line-1", "broken", "--images", image, "--json", "--db", db)
    code, out = _run(*base, "--max-area", "10")
    assert code == 0, out
    item = json.loads(out)["items"][0]
    # without a threshold no region is anomalous, so a limited normality suppresses nothing
    assert item["score_after"] == item["score_before"]
    before = _snapshot(db)
    code, out = _run(*base, "--max-area", "-3")
    assert code == 2 and "max_area" in out and ">= 0" in out, out
    assert _snapshot(db) == before


def test_parts_a_replica_retained_in_service_retained_dir_preview_from_another_machine(
    tmp_path: Path, postgres_url: str, bottle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from normadd.serve.app import create_app

    monkeypatch.delenv("NORMADD_API_KEYS", raising=False)
    plant, machine_a, machine_b = (tmp_path / name for name in ("plant", "machine-a", "machine-b"))
    for folder in (plant, machine_a, machine_b):
        folder.mkdir()
    config = plant / "service.yaml"  # retained_dir is relative to the config file, like database
    config.write_text(
        "class_name: bottle\nbackbone: tiny-random\nretain: {images: 5}\n"
        f"database: {postgres_url}\nservice:\n  line: line-r\n  device: cpu\n  retained_dir: shared\n"
        "  api_keys: {station-1: station-1-secret}\n"
    )
    monkeypatch.chdir(machine_a)
    image = bottle_dir / "test" / "broken_large" / "000.png"
    with TestClient(create_app(config)) as client:
        assert client.app.state.service.registry.retained_root == plant / "shared"  # type: ignore[attr-defined]
        response = client.post(
            "/v1/lines/line-r/inspect",
            headers={"X-API-Key": "station-1-secret"},
            files=[("images", ("000.png", image.read_bytes(), "image/png"))],
        )
        assert response.status_code == 200, response.text
    assert len(list((plant / "shared").rglob("*.png"))) == 1
    monkeypatch.chdir(machine_b)
    preview = ("normality", "preview", "line-r", "broken", "--recent", "1", "--json", "--db", postgres_url)
    code, out = _run(*preview)  # this machine's default folder lacks the replica's files
    assert code == 2 and "is missing from" in out, out
    code, out = _run(*preview, "--retained-dir", str(plant / "shared"))
    assert code == 0, out
    report = json.loads(out)
    assert report["parts"] == 1 and report["items"][0]["image"] == "000.png"
    assert report["items"][0]["sha256"] and report["items"][0]["score_after"] < report["items"][0]["score_before"]
    code, out = _run("line", "show", "line-r", "--db", postgres_url, "--retained-dir", str(plant / "shared"))
    assert code == 0 and "1 of 5 images" in out and str(plant / "shared") in out, out
