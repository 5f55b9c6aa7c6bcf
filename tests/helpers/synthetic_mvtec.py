"""Small folders in the MVTec AD layout, written in code: textured bottles with bright defects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: int = 64, defect_box: tuple[int, int, int, int] | None = None) -> Path:
    """A noisy grey image; a bright square where ``defect_box`` (top, left, bottom, right) says."""
    rng = np.random.default_rng(seed)
    array = rng.integers(60, 120, size=(size, size, 3), dtype=np.uint8)
    if defect_box is not None:
        top, left, bottom, right = defect_box
        array[top:bottom, left:right] = 250
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_mask(path: Path, size: int, box: tuple[int, int, int, int] | None) -> Path:
    """A 0/255 mask (mode L) with ``box`` set, or empty when ``box`` is None."""
    array = np.zeros((size, size), dtype=np.uint8)
    if box is not None:
        top, left, bottom, right = box
        array[top:bottom, left:right] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)  # uint8 (H, W) is mode L
    return path


def write_class(root: Path, name: str = "widget", defects: int = 4, goods: int = 2, size: int = 64) -> Path:
    """``<root>/<name>/test/{good,crack}`` and ``ground_truth/crack`` with one mask per defect image."""
    folder = root / name
    for index in range(goods):
        write_image(folder / "test" / "good" / f"{index:03d}.png", seed=index, size=size)
    for index in range(defects):
        offset = 8 + 6 * index
        box = (offset, offset, offset + 16, offset + 16)
        write_image(folder / "test" / "crack" / f"{index:03d}.png", seed=100 + index, size=size, defect_box=box)
        write_mask(folder / "ground_truth" / "crack" / f"{index:03d}_mask.png", size, box)
    return folder
