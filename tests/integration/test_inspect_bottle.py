"""The whole inspect pipeline on the real MVTec AD bottle images, with the tiny random backbone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from normadd.cli import app
from normadd.config import LineConfig
from normadd.factory import build_addition
from normadd.images import load_batch

runner = CliRunner()


def _read_scores(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_inspect_writes_three_overlays_per_image_and_one_scores_file(bottle_dir: Path, tmp_path: Path) -> None:
    images = [bottle_dir / "test" / "broken_large" / "000.png", bottle_dir / "test" / "good" / "000.png"]
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "inspect",
            *map(str, images),
            "--class-name",
            "bottle",
            "--add",
            "broken",
            "--add",
            "contamination:0.5",
            "--backbone",
            "tiny-random",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    # Same stem "000" in two folders: outputs are named apart, nothing is overwritten.
    for stem in ("broken_large__000", "good__000"):
        for kind in ("before", "after", "suppression"):
            picture = Image.open(out / f"{stem}_{kind}.png")
            assert picture.mode == "RGB" and picture.width == 256
            assert "RANDOM" in picture.text["normadd-model"]
    rows = _read_scores(out / "scores.csv")
    assert [Path(r["image"]).parent.name for r in rows] == ["broken_large", "good"]
    for row in rows:
        assert float(row["score_after"]) <= float(row["score_before"]) + 1e-6
        assert "RANDOM weights" in row["model"]
        assert row["normalities"] == "broken:1; contamination:0.5"
    record = json.loads((out / "run.json").read_text())
    assert record["random_weights"] is True and record["shared_clip_pass"] is True
    assert [n["name"] for n in record["normalities"]] == ["broken", "contamination"]
    assert "broken bottle" in record["normalities"][0]["phrases"]


def test_whole_bottle_test_set_runs_in_batches_and_after_never_exceeds_before(bottle_dir: Path, tmp_path: Path) -> None:
    addition = build_addition(LineConfig(class_name="bottle", backbone="tiny-random"))
    addition.add("broken")
    paths = sorted((bottle_dir / "test").rglob("*.png"))
    assert len(paths) == 83
    before_scores, after_scores = [], []
    for start in range(0, len(paths), 16):
        _, images, failures = load_batch(paths[start : start + 16], addition.input_size)
        assert not failures and images is not None
        result = addition.explain(images)
        assert bool((result.after <= result.before + 1e-6).all())
        assert result.suppression.min() >= 0 and result.suppression.max() <= 1
        before_scores += result.before_scores.tolist()
        after_scores += result.after_scores.tolist()
    assert len(after_scores) == 83
    assert np.all(np.isfinite(after_scores))
    # The suppression map is not constant: images get different after scores.
    assert np.std(after_scores) > 0


def test_removing_the_only_normality_restores_the_detector_scores(bottle_dir: Path) -> None:
    addition = build_addition(LineConfig(class_name="bottle", backbone="tiny-random"))
    _, images, _ = load_batch([bottle_dir / "test" / "contamination" / "000.png"], addition.input_size)
    assert images is not None
    plain = addition.explain(images)
    addition.add("contamination")
    added = addition.explain(images)
    addition.remove("contamination")
    restored = addition.explain(images)
    assert float(added.after_scores[0]) < float(plain.after_scores[0])
    assert float(restored.after_scores[0]) == pytest.approx(float(plain.after_scores[0]))


def test_demo_runs_offline_on_the_bundled_sample(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "tiny-random" in result.output
    maps = tmp_path / "demo" / "maps"
    assert len(list(maps.glob("*_after.png"))) == 4
    assert len(_read_scores(maps / "scores.csv")) == 4


def test_config_file_lists_the_line_normalities(bottle_dir: Path, tmp_path: Path) -> None:
    config = LineConfig.from_dict(
        {
            "class_name": "bottle",
            "backbone": "tiny-random",
            "normalities": ["broken", {"text": "contamination", "strength": 0.3}],
        }
    )
    path = tmp_path / "line.yaml"
    path.write_text(config.to_yaml())
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["inspect", str(bottle_dir / "test" / "good" / "001.png"), "--config", str(path), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert _read_scores(out / "scores.csv")[0]["normalities"] == "broken:1; contamination:0.3"
