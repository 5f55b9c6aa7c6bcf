"""Visual normality on the real MVTec AD bottle images: the example's own defect is what gets suppressed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from normadd.cli import app
from normadd.config import LineConfig
from normadd.factory import build_addition
from normadd.images import load_image
from normadd.masks import read_mask, resize_mask
from normadd.normality import NormalityAddition

runner = CliRunner()
EXAMPLE = ("broken_large", "000")


@pytest.fixture(scope="module")
def addition() -> NormalityAddition:
    return build_addition(LineConfig(class_name="bottle", backbone="tiny-random"))


def _paths(bottle_dir: Path, defect: str, stem: str) -> tuple[Path, Path]:
    return bottle_dir / "test" / defect / f"{stem}.png", bottle_dir / "ground_truth" / defect / f"{stem}_mask.png"


def _inside_and_outside(suppression: torch.Tensor, mask_path: Path) -> tuple[float, float]:
    inside = resize_mask(read_mask(mask_path), suppression.shape[-1]).bool()
    return float(suppression[inside].mean()), float(suppression[~inside].mean())


@pytest.mark.parametrize("example", [EXAMPLE, ("broken_small", "003")])
def test_suppression_on_the_example_is_higher_inside_its_mask_than_outside(
    addition: NormalityAddition, bottle_dir: Path, example: tuple[str, str]
) -> None:
    # Fails when the mask is misplaced: a vertically flipped mask gives 0.23 inside for broken_large/000,
    # a transposed one 0.19 for broken_small/003.
    image, mask = _paths(bottle_dir, *example)
    addition.add_example([image], [mask], name="scuff")
    try:
        result = addition.explain(load_image(image, addition.input_size)[None])
    finally:
        addition.remove("scuff")
    inside, outside = _inside_and_outside(result.suppression[0, 0], mask)
    assert inside > 0.5, (inside, outside)
    assert outside < 0.15, (inside, outside)


def test_without_the_mask_the_same_example_gives_no_such_contrast(
    addition: NormalityAddition, bottle_dir: Path
) -> None:
    # The control that makes the test above meaningful: the contrast comes from the mask, not the image.
    image, mask = _paths(bottle_dir, *EXAMPLE)
    addition.add_example([image], name="whole")
    try:
        result = addition.explain(load_image(image, addition.input_size)[None])
    finally:
        addition.remove("whole")
    inside, outside = _inside_and_outside(result.suppression[0, 0], mask)
    assert abs(inside - outside) < 0.05


def test_other_bottles_are_suppressed_less_than_the_example_defect(
    addition: NormalityAddition, bottle_dir: Path
) -> None:
    image, mask = _paths(bottle_dir, *EXAMPLE)
    addition.add_example([image], [mask], name="scuff")
    try:
        others = [bottle_dir / "test" / "good" / "000.png", bottle_dir / "test" / "contamination" / "000.png"]
        batch = torch.stack([load_image(p, addition.input_size) for p in [image, *others]])
        suppression = addition.explain(batch).suppression[:, 0]
    finally:
        addition.remove("scuff")
    inside_example, _ = _inside_and_outside(suppression[0], mask)
    for index in (1, 2):
        assert float(suppression[index].mean()) < 0.5 * inside_example


def test_inspect_adds_an_example_with_its_mask_from_the_command_line(bottle_dir: Path, tmp_path: Path) -> None:
    image, mask = _paths(bottle_dir, *EXAMPLE)
    out = tmp_path / "out"
    common = ["-c", "bottle", "--backbone", "tiny-random", "--out", str(out)]
    result = runner.invoke(app, ["inspect", str(image), *common, "--add-example", str(image), "--mask", str(mask)])
    assert result.exit_code == 0, result.output
    assert "added normality 'example:000'" in result.output
    row = next(csv.DictReader((out / "scores.csv").open()))
    # Scores are both taken at 256 px: the example can only lower the score (where the peak lies
    # inside the suppressed region), never raise it. Suppression inside the mask is tested above.
    assert float(row["score_after"]) <= float(row["score_before"])
    assert "examples 000.png:1" in row["normalities"]
    suppression = Image.open(out / "000_suppression.png")
    assert (
        "example:000" in suppression.text["normadd-normalities"] or "000.png" in suppression.text["normadd-normalities"]
    )


def test_bad_example_masks_are_one_clear_line(bottle_dir: Path, tmp_path: Path) -> None:
    image, mask = _paths(bottle_dir, *EXAMPLE)
    small = tmp_path / "small_mask.png"
    from PIL import Image

    Image.open(mask).resize((100, 100)).save(small)
    empty = tmp_path / "empty_mask.png"
    Image.new("L", (900, 900)).save(empty)
    common = [str(image), "-c", "bottle", "--backbone", "tiny-random", "--out", str(tmp_path / "o")]
    cases = [
        (["--add-example", str(image), "--mask", str(small)], "is 100x100 but its image"),
        (["--add-example", str(image), "--mask", str(empty)], "is empty (no defect pixel)"),
        (["--mask", str(mask)], "1 --mask for 0 --add-example"),
    ]
    for args, words in cases:
        result = runner.invoke(app, ["inspect", *common, *args])
        assert result.exit_code == 2, result.output
        assert words in result.output and "Traceback" not in result.output


def test_a_line_config_lists_its_examples_and_round_trips_through_yaml(bottle_dir: Path, tmp_path: Path) -> None:
    image, mask = _paths(bottle_dir, *EXAMPLE)
    config = LineConfig.from_dict(
        {
            "class_name": "bottle",
            "backbone": "tiny-random",
            "normalities": ["contamination"],
            "examples": [{"images": str(image), "masks": [str(mask)], "strength": 0.5, "name": "big break"}],
        }
    )
    path = tmp_path / "line.yaml"
    path.write_text(config.to_yaml())
    reread = LineConfig.from_yaml(path)
    assert reread.examples == config.examples
    assert reread.examples[0].images == [str(image)]
    addition = build_addition(reread)
    assert list(addition.normalities) == ["contamination", "big break"]
    assert addition.normalities["big break"].strength == 0.5 and addition.normalities["big break"].kind == "visual"
    assert "examples:" not in LineConfig(class_name="bottle").to_yaml()
