"""Saved anomaly maps: every accepted format, and one clear line for every bad map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from normadd.detectors.saved_maps import SavedMapsDetector, read_map
from normadd.errors import InvalidMapError


def _image(path: Path, width: int = 40, height: int = 40) -> Path:
    Image.new("RGB", (width, height), (120, 80, 40)).save(path)
    return path


def test_every_format_reads_to_the_same_scale(tmp_path: Path) -> None:
    ramp = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    np.save(tmp_path / "a.npy", ramp)
    Image.fromarray(ramp, mode="F").save(tmp_path / "b.tiff")
    Image.fromarray((ramp * 255).round().astype(np.uint8)).save(tmp_path / "c.png")
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(tmp_path / "d.png")
    for name, tolerance in (("a.npy", 0), ("b.tiff", 0), ("c.png", 1 / 255), ("d.png", 1 / 65535)):
        assert np.abs(read_map(tmp_path / name) - ramp).max() <= tolerance + 1e-7, name


def test_maps_are_matched_by_stem_and_resized(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / "img1.npy", np.ones((20, 20), dtype=np.float32))
    np.save(maps / "img2.npy", np.zeros((1, 20, 20), dtype=np.float32))
    images = [_image(tmp_path / "img2.png"), _image(tmp_path / "img1.png")]
    detector = SavedMapsDetector(maps, input_size=32)
    detector.check_images(images)
    detector.prepare_batch(images)
    result = detector.detect(torch.rand(2, 3, 32, 32))
    assert result.maps.shape == (2, 32, 32) and result.scores.tolist() == [0.0, 1.0]


def _error(detector: SavedMapsDetector, image: Path) -> str:
    with pytest.raises(InvalidMapError) as error:
        detector.check_images([image])
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_map_names_the_image_and_the_expected_file(tmp_path: Path) -> None:
    (tmp_path / "maps").mkdir()
    np.save(tmp_path / "maps" / "other.npy", np.zeros((8, 8)))
    message = _error(SavedMapsDetector(tmp_path / "maps"), _image(tmp_path / "part.png"))
    assert "part.png" in message and "part.npy" in message


def test_nan_map_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "maps").mkdir()
    bad = np.zeros((8, 8), dtype=np.float32)
    bad[2, 3] = np.nan
    np.save(tmp_path / "maps" / "part.npy", bad)
    message = _error(SavedMapsDetector(tmp_path / "maps"), _image(tmp_path / "part.png"))
    assert "part.npy" in message and "NaN" in message


def test_three_channel_map_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "maps").mkdir()
    np.save(tmp_path / "maps" / "part.npy", np.zeros((3, 8, 8), dtype=np.float32))
    message = _error(SavedMapsDetector(tmp_path / "maps"), _image(tmp_path / "part.png"))
    assert "part.npy" in message and "(3, 8, 8)" in message


def test_map_of_another_aspect_ratio_than_its_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "maps").mkdir()
    np.save(tmp_path / "maps" / "part.npy", np.zeros((8, 16), dtype=np.float32))
    message = _error(SavedMapsDetector(tmp_path / "maps"), _image(tmp_path / "part.png", 40, 40))
    assert "16x8" in message and "40x40" in message


def test_missing_or_empty_maps_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidMapError, match="does not exist"):
        SavedMapsDetector(tmp_path / "nowhere")
    with pytest.raises(InvalidMapError, match="holds no maps"):
        SavedMapsDetector(tmp_path)


def _two_defect_folders(tmp_path: Path, maps_layout: tuple[str, str]) -> tuple[Path, list[Path]]:
    """Images ``test/{broken,scratch}/000.png`` (repeated stems) and their maps under ``maps_layout``."""
    maps = tmp_path / "maps"
    images = []
    for folder, layout, value in (("broken", maps_layout[0], 1.0), ("scratch", maps_layout[1], 0.0)):
        (tmp_path / "data" / "test" / folder).mkdir(parents=True)
        images.append(_image(tmp_path / "data" / "test" / folder / "000.png"))
        (maps / layout).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps / layout, np.full((8, 8), value, dtype=np.float32))
    return maps, images


@pytest.mark.parametrize(
    "layout",
    [
        ("broken/000.npy", "scratch/000.npy"),
        ("test/broken/000.npy", "test/scratch/000.npy"),
        ("run-7/broken/000.npy", "run-7/scratch/000.npy"),  # a prefix folder of its own
    ],
)
def test_repeated_stems_are_matched_by_relative_path(tmp_path: Path, layout: tuple[str, str]) -> None:
    maps, images = _two_defect_folders(tmp_path, layout)
    detector = SavedMapsDetector(maps, input_size=8)
    detector.check_images(images)
    detector.prepare_batch(images)
    assert detector.detect(torch.rand(2, 3, 8, 8)).scores.tolist() == [1.0, 0.0]


def test_a_map_matching_several_images_equally_is_refused_in_one_line(tmp_path: Path) -> None:
    maps, images = _two_defect_folders(tmp_path, ("a/000.npy", "b/000.npy"))
    message = _error(SavedMapsDetector(maps), images[0])
    assert "matches 2 maps" in message and "a/000.npy" in message and "b/000.npy" in message


def test_two_formats_of_one_map_are_ambiguous(tmp_path: Path) -> None:
    (tmp_path / "maps").mkdir()
    np.save(tmp_path / "maps" / "part.npy", np.zeros((8, 8), dtype=np.float32))
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "maps" / "part.png")
    message = _error(SavedMapsDetector(tmp_path / "maps"), _image(tmp_path / "part.png"))
    assert "part.npy" in message and "part.png" in message
