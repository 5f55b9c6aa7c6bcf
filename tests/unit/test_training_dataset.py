"""The masked training set: MVTec AD layout, good images as empty masks, bad masks refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers.synthetic_mvtec import write_class, write_image, write_mask
from normadd.errors import DatasetError, InvalidMaskError
from normadd.training.dataset import MaskedImageDataset

SIZE = 80


def test_good_images_get_empty_masks_and_defect_images_their_own(tmp_path: Path) -> None:
    write_class(tmp_path, defects=2, goods=1)
    dataset = MaskedImageDataset.from_mvtec(tmp_path, SIZE)
    assert [(s.defect, s.image.name) for s in dataset.samples] == [
        ("crack", "000.png"),
        ("crack", "001.png"),
        ("good", "000.png"),
    ]
    image, mask, label = dataset[0]
    assert image.shape == (3, SIZE, SIZE) and mask.shape == (SIZE, SIZE)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    # The 16 x 16 square of a 64 px mask covers (16 / 64)^2 of the resized mask.
    assert float(mask.mean()) == pytest.approx((16 / 64) ** 2, abs=0.02)
    assert float(dataset[2][1].sum()) == 0.0 and label == 0


def test_a_class_folder_or_the_dataset_root_both_work_and_classes_filter(tmp_path: Path) -> None:
    write_class(tmp_path, "widget", defects=1, goods=1)
    write_class(tmp_path, "gadget", defects=1, goods=1)
    assert MaskedImageDataset.from_mvtec(tmp_path, SIZE).class_names == ["gadget", "widget"]
    assert MaskedImageDataset.from_mvtec(tmp_path / "widget", SIZE).class_names == ["widget"]
    assert MaskedImageDataset.from_mvtec(tmp_path, SIZE, classes=["gadget"]).class_names == ["gadget"]
    with pytest.raises(DatasetError, match=r"not in .*choose from"):
        MaskedImageDataset.from_mvtec(tmp_path, SIZE, classes=["bottle"])


def test_a_mask_of_another_size_than_its_image_is_refused(tmp_path: Path) -> None:
    folder = write_class(tmp_path, defects=1, goods=1)
    write_mask(folder / "ground_truth" / "crack" / "000_mask.png", 32, (0, 0, 8, 8))
    with pytest.raises(InvalidMaskError, match=r"is 32x32 but its image .* is 64x64"):
        MaskedImageDataset.from_mvtec(tmp_path, SIZE)


def test_an_empty_mask_of_a_defect_image_is_refused(tmp_path: Path) -> None:
    folder = write_class(tmp_path, defects=2, goods=1)
    write_mask(folder / "ground_truth" / "crack" / "001_mask.png", 64, None)
    with pytest.raises(InvalidMaskError, match=r"001_mask\.png is empty"):
        MaskedImageDataset.from_mvtec(tmp_path, SIZE)


def test_a_dataset_without_masks_is_refused(tmp_path: Path) -> None:
    write_class(tmp_path, defects=0, goods=3)
    with pytest.raises(DatasetError, match="no masks"):
        MaskedImageDataset.from_mvtec(tmp_path, SIZE)


def test_a_defect_image_without_its_mask_is_named(tmp_path: Path) -> None:
    folder = write_class(tmp_path, defects=1, goods=1)
    write_image(folder / "test" / "crack" / "007.png", seed=7)
    with pytest.raises(DatasetError, match=r"007\.png has no mask: put it at .*007_mask\.png"):
        MaskedImageDataset.from_mvtec(tmp_path, SIZE)


def test_a_folder_outside_the_mvtec_layout_is_refused(tmp_path: Path) -> None:
    write_image(tmp_path / "loose.png", seed=0)
    with pytest.raises(DatasetError, match="not in the MVTec AD layout"):
        MaskedImageDataset.from_mvtec(tmp_path, SIZE)
    with pytest.raises(DatasetError, match="does not exist"):
        MaskedImageDataset.from_mvtec(tmp_path / "missing", SIZE)


def test_a_mosaic_tiles_four_images_and_their_masks(tmp_path: Path) -> None:
    write_class(tmp_path, defects=2, goods=2)
    dataset = MaskedImageDataset.from_mvtec(tmp_path, SIZE)
    image, mask, _ = dataset.mosaic([0, 2, 3, 1])  # defect, good, good, defect
    assert image.shape == (3, SIZE, SIZE) and mask.shape == (SIZE, SIZE)
    half = SIZE // 2
    assert float(mask[:half, :half].sum()) > 0 and float(mask[half:, half:].sum()) > 0
    assert float(mask[:half, half:].sum()) == 0 and float(mask[half:, :half].sum()) == 0
    # Each quarter is a quarter of the mask area it had alone.
    assert float(mask.sum()) == pytest.approx(float(dataset[0][1].sum() + dataset[1][1].sum()) / 4, rel=0.15)
    assert torch.all((image >= 0) & (image <= 1))
