"""Heat-map overlays of anomaly and suppression maps, with a caption saying what they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, PngImagePlugin
from torch import Tensor

CAPTION_HEIGHT = 16


def heat_overlay(image: Tensor, heat: Tensor, vmax: float, alpha: float = 0.5) -> Image.Image:
    """Blend a jet-coloured map over the image.

    Args:
        image: (3, H, W) RGB in [0, 1] at any size (resized to the map).
        heat: (h, w) map, shown on the fixed range [0, vmax] so before/after compare honestly.
        vmax: Top of the colour scale (> 0).
        alpha: Weight of the colours.
    """
    h, w = heat.shape
    base = Image.fromarray((image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8))
    base = base.resize((w, h), Image.Resampling.BILINEAR)
    scaled = np.clip(heat.float().numpy() / max(vmax, 1e-12), 0.0, 1.0)
    colours = (colormaps["jet"](scaled)[..., :3] * 255).astype(np.uint8)
    return Image.blend(base, Image.fromarray(colours), alpha)


def with_caption(picture: Image.Image, caption: str) -> Image.Image:
    """Add a black strip with white text under the picture."""
    canvas = Image.new("RGB", (picture.width, picture.height + CAPTION_HEIGHT), (0, 0, 0))
    canvas.paste(picture, (0, 0))
    ImageDraw.Draw(canvas).text((3, picture.height + 2), caption, fill=(255, 255, 255))
    return canvas


def save_png(picture: Image.Image, path: Path, metadata: dict[str, str]) -> None:
    """Save a PNG with text metadata (model, weights, normalities)."""
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value)
    picture.save(path, pnginfo=info)
