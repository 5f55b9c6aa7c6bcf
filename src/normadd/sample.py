"""The bundled demo sample: small synthetic top-view "bottle" images that normadd generates.

Deterministic (seeded) pictures, so the sample carries no third-party licence: a bright rim on a
dark background with a textured inside; one image shows a broken rim, one a contamination spot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SAMPLE_SIZE = 256
SAMPLE_NAMES = ("good_0", "good_1", "broken_0", "contamination_0")


def _bottle(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2 + rng.normal(0, 2, size=2)
    radius = np.hypot(yy - centre[0], xx - centre[1]) / (size / 2)
    image = np.full((size, size, 3), 25.0, dtype=np.float32)
    rim = np.exp(-(((radius - 0.78) / 0.06) ** 2))
    inner = (radius < 0.7).astype(np.float32) * (70 + 40 * np.exp(-((radius / 0.35) ** 2)))
    image += (rim * 180)[..., None] + inner[..., None]
    image[..., 1] += rim * 20
    image += rng.normal(0, 6, size=image.shape)
    return image


def make_sample_image(name: str, size: int = SAMPLE_SIZE) -> Image.Image:
    """One sample image by name (see :data:`SAMPLE_NAMES`)."""
    rng = np.random.default_rng(SAMPLE_NAMES.index(name))
    image = _bottle(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if name.startswith("broken"):
        angle = np.arctan2(yy - size / 2, xx - size / 2)
        radius = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
        wedge = (np.abs(angle - 0.6) < 0.25) & (radius > 0.62) & (radius < 0.95)
        image[wedge] = 235 + rng.normal(0, 10, size=(int(wedge.sum()), 3))
    elif name.startswith("contamination"):
        spot = np.hypot(yy - size * 0.42, xx - size * 0.58) < size * 0.06
        image[spot] = np.array([120.0, 80.0, 30.0]) + rng.normal(0, 8, size=(int(spot.sum()), 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def write_sample(folder: str | Path) -> list[Path]:
    """Write the sample images as PNG files into ``folder``; returns their paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SAMPLE_NAMES:
        path = out / f"{name}.png"
        make_sample_image(name).save(path)
        paths.append(path)
    return paths
