"""Decisions end to end on the real bottle images with tiny-random: calibrate, inspect, serve, audit.

The CLI, the REST answer and the audit log must agree on every verdict; bad input is one line
(exit 2) and changes nothing.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from normadd.cli import app
from normadd.config import LineConfig
from normadd.registry.store import Registry
from normadd.serve.app import create_app
from normadd.serve.settings import ServiceConfig

runner = CliRunner()
KEY = "decisions-bottle"
LINE = "bottle-3"
PARTS = ("broken_large/000.png", "broken_large/001.png", "contamination/000.png", "good/000.png")


@dataclass
class Calibrated:
    folder: Path
    db: Path
    good: Path
    parts: Path
    output: str


def _cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, bottle_dir: Path) -> Iterator[Calibrated]:
    folder = tmp_path_factory.mktemp("decisions")
    good, parts = folder / "good", folder / "parts"
    good.mkdir()
    parts.mkdir()
    for image in sorted((bottle_dir / "train" / "good").glob("*.png"))[:6]:
        shutil.copy(image, good / image.name)
    for name in PARTS:
        shutil.copy(bottle_dir / "test" / name, parts / name.replace("/", "_"))
    db = folder / "normadd.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NORMADD_CACHE_DIR", str(folder / "cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        _cli("line", "create", LINE, "--class-name", "bottle", "--backbone", "tiny-random", "--db", str(db))
        _cli("normality", "add", LINE, "broken", "--db", str(db))
        output = _cli(
            "calibrate", LINE, "--good", str(good), "--false-reject", "0.2", "--defects", str(parts),
            "--db", str(db), "--who", "qe", "--why", "first calibration", "--device", "cpu",
        )  # fmt: skip
        yield Calibrated(folder, db, good, parts, output)


def test_calibrate_stores_the_quantile_threshold_with_who_and_why(calibrated: Calibrated) -> None:
    with Registry(calibrated.db) as registry:
        stored = registry.threshold(LINE)
        entry = registry.audit(LINE, action="threshold.set")[0]
    assert stored is not None and stored.method == "false-reject"
    assert (stored.set_by, stored.why) == ("qe", "first calibration")
    assert stored.details["good_images"] == 6 and stored.details["false_reject"] == 0.2
    # 6 good images at 20 %: floor(1.2) = 1 may be above -> the 5th smallest score
    assert stored.details["good_rejected"] <= 1
    assert (entry.who, entry.details["value"]) == ("qe", stored.value)
    assert "threshold" in calibrated.output and "good images rejected" in calibrated.output
    assert "escapes" in calibrated.output  # --defects prints the escape rate
    show = _cli("line", "show", LINE, "--db", str(calibrated.db))
    assert "valid for the line's detector" in show and "first calibration" in show.replace("\n", " ")


def test_calibrate_on_a_config_prints_the_keys_a_yaml_line_needs(calibrated: Calibrated, tmp_path: Path) -> None:
    config = tmp_path / "line.yaml"
    config.write_text("class_name: bottle\nbackbone: tiny-random\n")
    output = _cli("calibrate", "--config", str(config), "--good", str(calibrated.good), "--false-reject", "0.2")
    keys = yaml.safe_load(output[output.index("threshold:") :])
    with Registry(calibrated.db) as registry:
        stored = registry.threshold(LINE)
    assert stored is not None
    assert keys["threshold"] == stored.value  # same detector, same images: the same threshold
    assert keys["threshold_scale"] == stored.scale


def test_cli_rest_and_audit_agree_on_every_verdict(calibrated: Calibrated, tmp_path: Path) -> None:
    with Registry(calibrated.db) as registry:
        stored = registry.threshold(LINE)
    assert stored is not None
    config = tmp_path / "line.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "class_name": "bottle",
                "backbone": "tiny-random",
                "normalities": [{"text": "broken"}],
                "threshold": stored.value,
                "threshold_scale": stored.scale,
            }
        )
    )
    out = tmp_path / "out"
    _cli("inspect", str(calibrated.parts), "--config", str(config), "--out", str(out), "--device", "cpu")
    with (out / "scores.csv").open() as handle:
        cli = {Path(row["image"]).name: row for row in csv.DictReader(handle)}
    assert set(cli) == {name.replace("/", "_") for name in PARTS}
    assert all(row["verdict_before"] in ("OK", "NG") for row in cli.values())
    for row in cli.values():  # verdicts follow the scores: NG exactly when above the threshold
        assert row["verdict_before"] == ("NG" if float(row["score_before"]) > stored.value else "OK")

    settings = ServiceConfig(
        line=LINE,
        line_config=LineConfig(class_name="bottle", backbone="tiny-random"),
        database=calibrated.db,
        api_keys={"qe": KEY},
        device="cpu",
    )
    with TestClient(create_app(settings)) as client:
        files = [("images", (name, (calibrated.parts / name).read_bytes(), "image/png")) for name in sorted(cli)]
        answer = client.post(f"/v1/lines/{LINE}/inspect", headers={"X-API-Key": KEY}, files=files)
        assert answer.status_code == 200, answer.text
        audit = client.get(f"/v1/lines/{LINE}/audit", headers={"X-API-Key": KEY}, params={"action": "inspect"})
    logged = {entry["id"]: entry["details"] for entry in audit.json()["entries"]}
    for result in answer.json()["results"]:
        row = cli[result["filename"]]
        entry = logged[result["audit_id"]]
        for key in ("verdict_before", "verdict_after"):
            assert result[key] == row[key] == entry[key], (result["filename"], key)
        assert "; ".join(result["accepted_by"]) == row["accepted_by"] or result["accepted_combined"]
        assert entry["accepted_by"] == result["accepted_by"]
        assert result["threshold"] == entry["threshold"] == stored.value


def test_a_threshold_for_other_weights_is_refused_by_inspect_with_one_reason(
    calibrated: Calibrated, tmp_path: Path
) -> None:
    config = tmp_path / "line.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "class_name": "bottle",
                "backbone": "tiny-random",
                "threshold": 1.0,
                "threshold_scale": {"detector": "aprilgan", "backbone": "ViT-L-14-336", "weights": "default"},
            }
        )
    )
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["inspect", str(calibrated.parts / "good_000.png"), "--config", str(config), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "verdicts undecided: the threshold was set for another detector score scale" in result.output
    with (out / "scores.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert (row["verdict_before"], row["verdict_after"]) == ("undecided", "undecided")
    assert "backbone ViT-L-14-336 -> tiny-random" in row["verdict_reason"]


def _unchanged(calibrated: Calibrated) -> tuple[object, int]:
    with Registry(calibrated.db) as registry:
        stored = registry.threshold(LINE)
        return (stored.value if stored else None), len(registry.audit(LINE, limit=1000))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("line", "set-threshold", LINE, "nan"), "finite"),
        (("line", "set-threshold", LINE, "-1"), ">= 0"),
        (("line", "set-threshold", LINE, "abc"), "a number"),
        (("calibrate", LINE, "--false-reject", "0"), "(0, 1)"),
        (("calibrate", LINE, "--false-reject", "1.5"), "(0, 1)"),
        (("calibrate", LINE, "--false-reject", "x"), "(0, 1)"),
    ],
)
def test_bad_thresholds_and_rates_are_one_line_and_change_nothing(
    calibrated: Calibrated, args: tuple[str, ...], words: str
) -> None:
    before = _unchanged(calibrated)
    extra = ("--good", str(calibrated.good)) if args[0] == "calibrate" else ()
    result = runner.invoke(app, [*args, *extra, "--db", str(calibrated.db)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.output
    assert _unchanged(calibrated) == before


def test_good_folders_without_a_readable_image_are_one_line(calibrated: Calibrated, tmp_path: Path) -> None:
    before = _unchanged(calibrated)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["calibrate", LINE, "--good", str(empty), "--db", str(calibrated.db)])
    assert result.exit_code == 2 and "--good" in result.output and "no images" in result.output, result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    args = ["calibrate", LINE, "--good", str(broken), "--db", str(calibrated.db), "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "no readable image" in result.output, result.output
    assert _unchanged(calibrated) == before


@pytest.mark.parametrize(
    ("normality", "extra", "words"),
    [
        ({"text": "scratch", "max_area": -4}, {}, "max_area of normality 'scratch' must be >= 0"),
        ({"text": "scratch", "max_length": "2 mm"}, {}, "pixel_size_mm"),
        ({"text": "scratch", "region": "REGION"}, {"threshold": 1.0}, "another aspect ratio"),
    ],
)
def test_bad_limits_and_regions_are_one_line_before_anything_runs(
    calibrated: Calibrated, tmp_path: Path, normality: dict[str, object], extra: dict[str, object], words: str
) -> None:
    region = tmp_path / "region.png"
    Image.new("L", (300, 100), 255).save(region)  # the bottle images are square
    normality = {k: (str(region) if v == "REGION" else v) for k, v in normality.items()}
    config = tmp_path / "line.yaml"
    line = {"class_name": "bottle", "backbone": "tiny-random", "normalities": [normality], **extra}
    config.write_text(yaml.safe_dump(line))
    out = tmp_path / "out"
    result = runner.invoke(app, ["inspect", str(calibrated.parts), "--config", str(config), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert words in result.output.replace("\n", " ")
    assert not out.exists()
