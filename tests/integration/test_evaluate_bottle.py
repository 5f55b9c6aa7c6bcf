"""``normadd evaluate`` on the real MVTec AD bottle images with the tiny random backbone.

The first run fills a feature cache shared by this module; the second run of the same
evaluation must read it and do no detector or CLIP pass at all. (Groups files, several groups
at once and bad input are covered on small synthetic data in tests/unit/test_evaluation_runner.py.)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normadd.backbone.clip_encoder import ClipEncoder
from normadd.cli import app
from normadd.decisions import quantile_threshold
from normadd.detectors.aprilgan import AprilGanDetector

MVTEC = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mvtec_ad"
runner = CliRunner()


@dataclass
class Run:
    out: Path
    output: str
    image_passes: int


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _evaluate(out: Path, *extra: str) -> Run:
    """Run the CLI, counting the images that go through the image tower and the detector."""
    counted = {"images": 0, "detector": 0}
    encode, detect = ClipEncoder.encode_images, AprilGanDetector.detect_features

    def counting_encode(self: ClipEncoder, pixels):  # type: ignore[no-untyped-def]
        counted["images"] += pixels.shape[0]
        return encode(self, pixels)

    def counting_detect(self: AprilGanDetector, features):  # type: ignore[no-untyped-def]
        counted["detector"] += features.batch_size
        return detect(self, features)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ClipEncoder, "encode_images", counting_encode)
        patch.setattr(AprilGanDetector, "detect_features", counting_detect)
        args = ["evaluate", "--data", str(MVTEC), "--classes", "bottle", "--backbone", "tiny-random"]
        result = runner.invoke(app, [*args, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert counted["images"] == counted["detector"], "one CLIP pass serves detector and normality detector"
    return Run(out, result.output, counted["images"])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evaluation-cache")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Iterator[Run]:
    if not (MVTEC / "bottle").is_dir():
        pytest.fail(f"the real bottle data is missing at {MVTEC}: clone the repo with ../shared beside it")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NORMADD_CACHE_DIR", str(cache))
        patch.setenv("HF_HUB_OFFLINE", "1")
        run = _evaluate(tmp_path_factory.mktemp("first") / "out")
        yield run


def test_both_bottle_groups_are_scored_with_the_papers_numbers_beside_them(first_run: Run) -> None:
    rows = _rows(first_run.out / "results.csv")
    assert list(rows[0]) == ["class", "group", "auroc_before", "auroc_after", "paper_before", "paper_after"]
    assert [(r["class"], r["group"]) for r in rows] == [("bottle", "broken"), ("bottle", "contamination")]
    assert [(r["paper_before"], r["paper_after"]) for r in rows] == [("23.50", "61.40"), ("89.80", "89.00")]
    for row in rows:
        assert 0.0 <= float(row["auroc_before"]) <= 100.0 and 0.0 <= float(row["auroc_after"]) <= 100.0
    summary = _rows(first_run.out / "summary.csv")
    assert summary[-1]["class"] == "mean over classes"
    assert summary[-1]["paper_before"] == "56.65"  # the paper's bottle figure: (23.5 + 89.8) / 2


TRAIN_GOOD = 209  # bottle/train/good: scored once for the decisions' threshold


def test_the_first_run_passes_each_test_image_once(first_run: Run) -> None:
    assert first_run.image_passes == 83 + TRAIN_GOOD
    output = " ".join(first_run.output.split())  # the console wraps long lines
    passes = "292 detector passes, 292 CLIP passes, 2 group texts"
    assert f"83 images (+209 train/good for the thresholds): {passes}" in output


def test_decisions_count_every_test_image_of_each_group_at_a_threshold_from_train_good(
    first_run: Run, cache: Path
) -> None:
    rows = _rows(first_run.out / "decisions.csv")
    assert [(r["class"], r["added_group"]) for r in rows] == [("bottle", "broken"), ("bottle", "contamination")]
    test = MVTEC / "bottle" / "test"
    sizes = {kind.name: len(list(kind.glob("*.png"))) for kind in test.iterdir()}
    groups = {"broken": ("broken_large", "broken_small"), "contamination": ("contamination",)}
    for row in rows:
        in_group = sum(sizes[t] for t in groups[row["added_group"]])
        assert int(row["good_images"]) == sizes["good"]
        assert int(row["group_images"]) == in_group
        assert int(row["other_images"]) == sum(sizes.values()) - sizes["good"] - in_group
        assert int(row["train_good_images"]) == TRAIN_GOOD and row["false_reject_target"] == "0.01"
        for kind in ("good_rejected", "group_accepted", "other_accepted"):
            total = int(row[kind.split("_")[0] + "_images"])
            assert 0 <= int(row[f"{kind}_before"]) <= total and 0 <= int(row[f"{kind}_after"]) <= total
        # the threshold is the quantile rule on the cached train/good scores: at most 1 % of them above it
        (scores_file,) = (cache / "calibration-scores").glob("*.json")
        good_scores = list(json.loads(scores_file.read_text()).values())
        assert len(good_scores) == TRAIN_GOOD
        assert float(row["threshold"]) == quantile_threshold(good_scores, 0.01)
        assert sum(score > float(row["threshold"]) for score in good_scores) <= 0.01 * TRAIN_GOOD
        # a normality only lowers scores: fewer rejects, more accepts
        assert int(row["group_accepted_after"]) >= int(row["group_accepted_before"])
        assert int(row["other_accepted_after"]) >= int(row["other_accepted_before"])
        assert int(row["good_rejected_after"]) <= int(row["good_rejected_before"])
    assert rows[0]["threshold"] == rows[1]["threshold"], "one threshold per class"
    assert "bottle +broken at threshold" in first_run.output
    markdown = (first_run.out / "report.md").read_text()
    assert "### Decisions: what the line would accept" in markdown
    assert "![Decisions, bottle](figures/decisions_bottle.png)" in markdown
    assert (first_run.out / "figures" / "decisions_bottle.png").stat().st_size > 1000


def test_selectivity_and_pixel_metrics_are_reported(first_run: Run) -> None:
    selectivity = _rows(first_run.out / "selectivity.csv")
    assert [(r["added_group"], r["other_group"]) for r in selectivity] == [
        ("broken", "contamination"),
        ("contamination", "broken"),
    ]
    pixel = {r["added_group"]: r for r in _rows(first_run.out / "pixel.csv")}
    assert pixel["broken"]["images"] == "41"  # 20 good + 21 contamination
    assert pixel["contamination"]["images"] == "62"  # 20 good + 42 broken
    for row in pixel.values():
        for column in ("pixel_auroc_before", "pixel_auroc_after", "aupro_before", "aupro_after"):
            assert 0.0 <= float(row[column]) <= 100.0


def test_the_reports_hold_the_tables_and_embedded_figures(first_run: Run) -> None:
    page = (first_run.out / "report.html").read_text()
    assert "<table>" in page and "contamination" in page and "61.4" in page
    assert page.count("src='data:image/png;base64,") == 3  # ROC curves, the example grid and the decisions
    assert "http://" not in page and "https://" not in page  # opens offline
    assert "RANDOM weights" in page
    markdown = (first_run.out / "report.md").read_text()
    assert "| class | group | auroc_before | auroc_after | paper_before | paper_after |" in markdown
    assert "| bottle | broken |" in markdown and "| bottle | contamination |" in markdown
    assert "![ROC curves, bottle](figures/roc_bottle.png)" in markdown
    assert (first_run.out / "figures" / "roc_bottle.png").stat().st_size > 1000
    assert (first_run.out / "figures" / "examples_bottle.png").stat().st_size > 1000


def test_a_second_run_reads_the_cache_and_does_no_detector_pass(first_run: Run, cache: Path, tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NORMADD_CACHE_DIR", str(cache))
        second = _evaluate(tmp_path / "second")
    assert second.image_passes == 0
    assert "0 detector passes, 0 CLIP passes" in second.output.replace("\n", " ")
    assert (second.out / "results.csv").read_text() == (first_run.out / "results.csv").read_text()
    assert (second.out / "pixel.csv").read_text() == (first_run.out / "pixel.csv").read_text()
