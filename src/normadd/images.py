"""Reading images safely: every file either becomes an RGB tensor or one clear error line.

Handles corrupt, truncated and empty files, decompression bombs, and converts 16-bit, RGBA,
palette and grayscale images to 8-bit RGB. Resizing squashes to a square with PIL's bicubic
filter, as APRIL-GAN's preprocessing (open_clip's ``image_resize_mode='squash'``) does.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from normadd.errors import ImageLoadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 80_000_000  # ~ 9000 x 9000; larger files are refused as possible decompression bombs


@dataclass(frozen=True)
class LoadFailure:
    """An image that could not be read, and why (one line)."""

    path: Path
    reason: str


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the given folders.

    Raises:
        ImageLoadError: A path that does not exist, or no image found at all.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise ImageLoadError(f"{path} does not exist: pass image files or folders of images")
    if not found:
        raise ImageLoadError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in the given paths")
    return list(dict.fromkeys(found))


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A unique output name per image: the file stem, or ``<parent>_<stem>`` when stems repeat."""
    counts = Counter(p.stem for p in paths)
    stems = [p.stem if counts[p.stem] == 1 else f"{p.parent.name}_{p.stem}" for p in paths]
    seen: Counter[str] = Counter()
    unique = []
    for stem in stems:
        seen[stem] += 1
        unique.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return unique


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    return image.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB.

    Raises:
        ImageLoadError: Missing, empty, corrupt, truncated or oversized file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: the file is empty")
    return _decode(path, str(path), MAX_PIXELS)


def _decode(source: Path | io.BytesIO, name: str, max_pixels: int) -> Image.Image:
    """Fully decode an image file or buffer as 8-bit RGB; every failure is one :class:`ImageLoadError` line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if image.width * image.height > max_pixels:
                    raise ImageLoadError(
                        f"{name}: {image.width}x{image.height} is over {max_pixels:,} pixels "
                        "(possible decompression bomb): downscale it first"
                    )
                image.load()
                return _to_rgb(image)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(f"{name}: refused as a possible decompression bomb: downscale it first") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image file PIL can read (corrupt or wrong format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{name}: corrupt or truncated image ({error})") from None


def to_tensor(image: Image.Image, size: int) -> Tensor:
    """Squash-resize with PIL bicubic to (size, size) and return (3, size, size) floats in [0, 1]."""
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_image(path: str | Path, size: int) -> Tensor:
    """Read one image as a (3, size, size) tensor in [0, 1].

    Raises:
        ImageLoadError: The file cannot be read (the message says why).
    """
    return to_tensor(open_rgb(path), size)


def load_batch(paths: Sequence[Path], size: int) -> tuple[list[Path], Tensor | None, list[LoadFailure]]:
    """Read what can be read; the rest become failures and the batch goes on without them.

    Returns:
        The paths that loaded, their stacked tensor (or None when none did), and the failures.
    """
    loaded: list[Path] = []
    tensors: list[Tensor] = []
    failures: list[LoadFailure] = []
    for path in paths:
        try:
            tensors.append(load_image(path, size))
            loaded.append(path)
        except ImageLoadError as error:
            failures.append(LoadFailure(path, str(error)))
    return loaded, (torch.stack(tensors) if tensors else None), failures


def load_image_bytes(data: bytes, size: int, name: str = "upload", max_pixels: int = MAX_PIXELS) -> Tensor:
    """Decode an uploaded image from memory as a (3, size, size) tensor in [0, 1].

    The same protections as :func:`open_rgb`, for bytes that never touched the disk.

    Args:
        data: The encoded file (PNG, JPEG, ...).
        size: Side of the returned tensor.
        name: How the image is named in error messages (e.g. the upload's file name).
        max_pixels: Largest accepted width x height.

    Raises:
        ImageLoadError: Empty, corrupt, truncated, non-image or oversized data.
    """
    if not data:
        raise ImageLoadError(f"{name}: the file is empty")
    return to_tensor(_decode(io.BytesIO(data), name, max_pixels), size)
