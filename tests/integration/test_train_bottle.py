"""Training the APRIL-GAN projections on the real MVTec AD bottle images, with the tiny random backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normadd.backbone import TINY_RANDOM, ClipEncoder
from normadd.cli import app
from normadd.training import MaskedImageDataset, ProjectionTrainer, TrainingSettings

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mvtec_ad"
runner = CliRunner()

# A small, fixed subset keeps the test fast: 6 defect images of all three types and 2 good ones.
SUBSET = {
    "broken_large": ["000", "007"],
    "broken_small": ["003", "011"],
    "contamination": ["002", "015"],
    "good": ["000", "010"],
}


@pytest.fixture(scope="module")
def bottle_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the subset in the MVTec layout (links, not copies, of the original files)."""
    bottle = SHARED_DATA / "bottle"
    if not bottle.is_dir():
        pytest.fail(f"the real bottle data is missing at {bottle}: clone the repo with ../shared beside it")
    root = tmp_path_factory.mktemp("mvtec") / "bottle"
    for defect, stems in SUBSET.items():
        for stem in stems:
            image = root / "test" / defect / f"{stem}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.symlink_to(bottle / "test" / defect / f"{stem}.png")
            if defect != "good":
                mask = root / "ground_truth" / defect / f"{stem}_mask.png"
                mask.parent.mkdir(parents=True, exist_ok=True)
                mask.symlink_to(bottle / "ground_truth" / defect / f"{stem}_mask.png")
    return root


def test_a_few_training_steps_on_bottle_lower_the_loss(bottle_subset: Path) -> None:
    encoder = ClipEncoder.from_name(TINY_RANDOM)
    dataset = MaskedImageDataset.from_mvtec(bottle_subset, encoder.image_size)
    assert len(dataset) == 8 and sum(s.mask is not None for s in dataset.samples) == 6
    trainer = ProjectionTrainer(encoder, TrainingSettings(epochs=4, batch_size=4, mosaic_rate=0.0))
    before = trainer.evaluate(trainer.new_projections(), dataset)
    result = trainer.fit(dataset)
    after = trainer.evaluate(result.projections, dataset)
    assert after < 0.8 * before, (before, after)
    assert result.epoch_losses[-1] < result.epoch_losses[0]


def test_cli_trains_a_checkpoint_that_inspect_loads(bottle_subset: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "bottle_tiny.pth"
    trained = runner.invoke(
        app,
        [
            "train-projections",
            "--data",
            str(bottle_subset),
            "--backbone",
            TINY_RANDOM,
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--out",
            str(checkpoint),
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "8 images (6 with masks) of bottle" in trained.output
    assert "loss" in trained.output and checkpoint.is_file()

    out = tmp_path / "inspect"
    inspected = runner.invoke(
        app,
        [
            "inspect",
            str(bottle_subset / "test" / "broken_large" / "000.png"),
            "--class-name",
            "bottle",
            "--backbone",
            TINY_RANDOM,
            "--projections",
            str(checkpoint),
            "--add",
            "broken",
            "--out",
            str(out),
        ],
    )
    assert inspected.exit_code == 0, inspected.output
    record = json.loads((out / "run.json").read_text())
    assert f"linear projections (normadd checkpoint {checkpoint})" in record["model"]

    resumed = runner.invoke(
        app,
        [
            "train-projections",
            "--data",
            str(bottle_subset),
            "--backbone",
            TINY_RANDOM,
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--resume",
            str(checkpoint),
            "--out",
            str(checkpoint),
        ],
    )
    assert resumed.exit_code == 0, resumed.output
    assert "2 (earlier run)" in resumed.output and "│ 3 " in resumed.output


def test_a_checkpoint_for_other_layers_is_one_clear_line(bottle_subset: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "p.pth"
    encoder = ClipEncoder.from_name(TINY_RANDOM)
    dataset = MaskedImageDataset.from_mvtec(bottle_subset, encoder.image_size)
    ProjectionTrainer(encoder, TrainingSettings(epochs=1, batch_size=8)).fit(dataset, out=checkpoint)
    image = str(bottle_subset / "test" / "good" / "000.png")
    common = ["-c", "bottle", "--backbone", TINY_RANDOM, "--projections", str(checkpoint), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, ["inspect", image, *common, "--layers", "1,2"])
    assert result.exit_code == 2
    assert "was made for backbone 'tiny-random' layers [1, 2, 3, 4]" in result.output
    assert "Traceback" not in result.output
    args = ["train-projections", "--data", str(bottle_subset), "--backbone", TINY_RANDOM, "--layers", "2,4"]
    result = runner.invoke(app, [*args, "--resume", str(checkpoint), "--out", str(tmp_path / "q.pth")])
    assert result.exit_code == 2 and "trained on backbone 'tiny-random' layers [1, 2, 3, 4]" in result.output


def test_training_data_problems_are_one_clear_line(bottle_subset: Path, tmp_path: Path) -> None:
    only_good = tmp_path / "only_good" / "bottle" / "test" / "good"
    only_good.mkdir(parents=True)
    (only_good / "000.png").symlink_to(bottle_subset / "test" / "good" / "000.png")
    base = ["train-projections", "--backbone", TINY_RANDOM, "--out", str(tmp_path / "x.pth")]
    result = runner.invoke(app, [*base, "--data", str(tmp_path / "only_good")])
    assert result.exit_code == 2 and "has no masks" in result.output, result.output
    result = runner.invoke(app, [*base, "--data", str(bottle_subset), "--classes", "cable"])
    assert result.exit_code == 2 and "classes ['cable'] are not in" in result.output
    result = runner.invoke(app, [*base, "--data", str(bottle_subset), "--lr", "-1"])
    assert result.exit_code == 2 and "learning rate must be a positive number" in result.output
    assert not (tmp_path / "x.pth").exists()
