"""Reading defect masks: binary, the same pixel size as their image, or one clear error line.

A mask is any single- or multi-channel image whose non-zero pixels mark the defect (MVTec AD
stores 0/255, other sets 0/1). For training, masks are resized to the run size like their images
(squashed by default, or letterboxed), bilinearly, and thresholded at 0.5 (APRIL-GAN's target
transform; see ``../shared/paper/aprilgan_spec.md``). EXIF orientation is applied to masks as to
images, so sizes compare upright.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from torch import Tensor

from normadd.errors import ImageLoadError, InvalidMaskError
from normadd.images import DEFAULT_RESIZE, check_resize_mode, letterbox_box, open_rgb

_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def image_size_of(path: str | Path) -> tuple[int, int]:
    """Upright (width, height) of an image file (EXIF orientation applied), reading only its header.

    Raises:
        ImageLoadError: The file is missing or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: file not found")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112) in _TRANSPOSING_ORIENTATIONS:
                return height, width
            return width, height
    except (OSError, SyntaxError, ValueError):
        raise ImageLoadError(f"{path}: not an image file PIL can read (corrupt or wrong format)") from None


def check_mask_fits(mask_path: str | Path, image_path: str | Path) -> None:
    """Refuse a mask whose pixel size differs from its image's (header reads only).

    Raises:
        InvalidMaskError: The sizes differ (the message gives both).
        ImageLoadError: Either file is missing or unreadable.
    """
    mask_size, image_size = image_size_of(mask_path), image_size_of(image_path)
    if mask_size != image_size:
        raise InvalidMaskError(
            f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {image_path} is "
            f"{image_size[0]}x{image_size[1]}: a mask must have its image's size"
        )


def read_mask(path: str | Path) -> Tensor:
    """Read a mask file at its own size as a (H, W) float tensor of 0/1 (non-zero = defect).

    Raises:
        ImageLoadError: Missing, empty, corrupt or oversized file.
    """
    image = open_rgb(path)  # the same safe decoding as images (bombs, truncation, 16-bit)
    array = np.asarray(image.convert("L")) > 0
    return torch.from_numpy(array.astype(np.float32))


def binary_mask_tensor(mask: Tensor, what: str) -> Tensor:
    """Check a mask tensor (H, W) and return it as 0/1 floats (values > 0.5 count as defect).

    Raises:
        InvalidMaskError: Not two-dimensional, or NaN values.
    """
    if mask.dim() != 2:
        raise InvalidMaskError(f"{what} must be a (H, W) tensor, got shape {tuple(mask.shape)}")
    if not torch.isfinite(mask).all():
        raise InvalidMaskError(f"{what} has NaN or infinite values")
    return (mask.float() > 0.5).float()


def resize_mask(mask: Tensor, size: int, resize: str = DEFAULT_RESIZE) -> Tensor:
    """Resize a 0/1 mask (H, W) to (size, size) as its image is: bilinear (antialiased, as PIL), then > 0.5.

    ``squash`` stretches to the square; ``letterbox`` keeps the aspect ratio and pads with 0
    (no defect) exactly where :func:`normadd.images.to_tensor` pads the image with black.
    """
    if mask.shape == (size, size):
        return mask
    if check_resize_mode(resize) == "letterbox":
        left, top, new_width, new_height = letterbox_box(int(mask.shape[1]), int(mask.shape[0]), size)
        inner = F.interpolate(mask[None, None].float(), size=(new_height, new_width), mode="bilinear", antialias=True)
        padded = torch.zeros(size, size)
        padded[top : top + new_height, left : left + new_width] = (inner[0, 0] > 0.5).float()
        return padded
    resized = F.interpolate(mask[None, None].float(), size=(size, size), mode="bilinear", antialias=True)
    return (resized[0, 0] > 0.5).float()


def patch_coverage(mask: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """Fraction of each patch the mask covers: (H, W) 0/1 -> (rows, cols) in [0, 1].

    Computed on the mask at its full size (area pooling), so small defects that a resize to the
    run size would erase still count.
    """
    return F.adaptive_avg_pool2d(mask[None, None].float(), grid_size)[0, 0]
