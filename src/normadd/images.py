"""Reading images safely: every file either becomes an RGB tensor or one clear error line.

Handles corrupt, truncated and empty files (PNG chunk checksums are verified before decoding),
decompression bombs, and EXIF orientation, and maps every mode PIL opens (1, L, LA, P, PA, RGB,
RGBA, CMYK, YCbCr, LAB, HSV, I, I;16, F, ...) to the right 8-bit RGB: 16-bit, 32-bit integer and
float images are scaled by their value range, not clipped. Resizing squashes to a square with
PIL's bicubic filter, as APRIL-GAN's preprocessing (open_clip's ``image_resize_mode='squash'``)
does, or letterboxes (aspect kept, black borders) with ``resize="letterbox"``.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from normadd.errors import ImageLoadError, NormaddError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 80_000_000  # ~ 9000 x 9000; larger files are refused as possible decompression bombs
RESIZE_MODES = ("squash", "letterbox")
DEFAULT_RESIZE = "squash"  # APRIL-GAN's convention


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
    """A unique, traceable output name per image.

    The file stem when it is unique; otherwise the shortest tail of the path that tells the
    colliding files apart: the file name with its extension (``rgb.bmp`` / ``rgb.webp``), then
    parent folders joined with ``__`` (``broken_large__000``, ``good__000``). A counter is added
    only when two inputs have the same path tail all the way up (e.g. the same file given twice
    by different relative paths). ``run.json`` maps every name back to its input path.
    """
    by_stem: dict[str, list[int]] = defaultdict(list)
    for index, path in enumerate(paths):
        by_stem[path.stem].append(index)
    names = [_printable_name(p.stem) for p in paths]
    for indices in by_stem.values():
        if len(indices) == 1:
            continue
        group = [paths[i] for i in indices]
        depth = max(len(p.parts) for p in group)
        for candidates in _tails(group, depth):
            if len(set(candidates)) == len(candidates):
                break
        for i, name in zip(indices, candidates, strict=True):
            names[i] = name
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


def _printable_name(text: str) -> str:
    """A file-name part with control characters and path separators replaced by ``_``."""
    return "".join("_" if not ch.isprintable() or ch in "/\\" else ch for ch in text)


def _tails(group: Sequence[Path], depth: int) -> Iterable[list[str]]:
    """Candidate names from short to long: stem+suffix, then parent folders before stem, stem+suffix."""
    yield [_printable_name(p.name) for p in group]
    for up in range(1, depth):
        parents = [[_printable_name(part) for part in p.parts[-1 - up : -1]] for p in group]
        yield ["__".join([*parts, _printable_name(p.stem)]) for parts, p in zip(parents, group, strict=True)]
        yield ["__".join([*parts, _printable_name(p.name)]) for parts, p in zip(parents, group, strict=True)]


def _value_scale(array: np.ndarray, mode: str) -> float:
    """The value that means full white for a high-depth single-channel image.

    16-bit modes use 65535; a float image whose values lie in [0, 1] uses 1; otherwise the
    smallest of 255, 65535 and 2**32 - 1 that holds the largest value (a 32-bit integer or float
    image holding 8- or 16-bit data keeps its meaning).
    """
    if mode.startswith("I;16"):
        return 65535.0
    top = float(array.max()) if array.size else 0.0
    if mode == "F" and top <= 1.0:
        return 1.0
    for scale in (255.0, 65535.0, 4294967295.0):
        if top <= scale:
            return scale
    return top


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB with the same meaning: high-depth values scaled, not clipped.

    Single-channel 16-bit, 32-bit integer and float images (``I;16*``, ``I``, ``F``) are scaled
    to 0..255 by :func:`_value_scale` (NaN and negative values become 0); every other mode
    goes through PIL's own conversion (alpha dropped, palette looked up, CMYK/YCbCr/LAB/HSV
    converted).

    Raises:
        ImageLoadError: A mode PIL cannot convert to RGB.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
        scale = _value_scale(array, image.mode)
        array = np.clip(np.rint(array / scale * 255.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    elif image.mode == "La":  # premultiplied alpha: PIL converts it only to LA
        image = image.convert("LA")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageLoadError(f"image mode {image.mode} cannot be converted to RGB ({error})") from None


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
            _verify(source, name)
            with Image.open(source) as image:
                if image.width * image.height > max_pixels:
                    raise ImageLoadError(
                        f"{name}: {image.width}x{image.height} is over {max_pixels:,} pixels "
                        "(possible decompression bomb): downscale it first"
                    )
                image.load()
                # A phone photo stores its rotation in EXIF: apply it so it is scored upright.
                return to_rgb(ImageOps.exif_transpose(image))
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(f"{name}: refused as a possible decompression bomb: downscale it first") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image file PIL can read (corrupt or wrong format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{name}: corrupt or truncated image ({error})") from None


def _verify(source: Path | io.BytesIO, name: str) -> None:
    """Run PIL's ``verify()`` (PNG: every chunk's CRC) on a separate open, as libpng-based readers do.

    Raises:
        ImageLoadError: A checksum or structure error.
    """
    with Image.open(source) as image:
        if image.format != "PNG":  # verify() checks checksums only for PNG; others decode fully below
            return
        try:
            image.verify()
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageLoadError(f"{name}: corrupt or truncated PNG (checksum or structure error: {error})") from None
    if isinstance(source, io.BytesIO):
        source.seek(0)


def check_resize_mode(resize: str) -> str:
    """Return ``resize`` when it is a known mode.

    Raises:
        NormaddError: An unknown mode (the message lists the known ones).
    """
    if resize not in RESIZE_MODES:
        raise NormaddError(f"resize '{resize}' is unknown: choose {' or '.join(RESIZE_MODES)}")
    return resize


def letterbox_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Where a ``width`` x ``height`` image lands in a letterboxed square: (left, top, new_width, new_height)."""
    scale = size / max(width, height)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    return (size - new_width) // 2, (size - new_height) // 2, new_width, new_height


def to_tensor(image: Image.Image, size: int, resize: str = DEFAULT_RESIZE) -> Tensor:
    """Resize with PIL bicubic to (size, size) and return (3, size, size) floats in [0, 1].

    ``squash`` stretches to the square (APRIL-GAN); ``letterbox`` keeps the aspect ratio and pads
    the short side with black, centred.
    """
    if check_resize_mode(resize) == "letterbox":
        left, top, new_width, new_height = letterbox_box(image.width, image.height, size)
        canvas = Image.new("RGB", (size, size))
        canvas.paste(image.resize((new_width, new_height), Image.Resampling.BICUBIC), (left, top))
        resized = canvas
    else:
        resized = image.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_image(path: str | Path, size: int, resize: str = DEFAULT_RESIZE) -> Tensor:
    """Read one image as a (3, size, size) tensor in [0, 1].

    Raises:
        ImageLoadError: The file cannot be read (the message says why).
    """
    return to_tensor(open_rgb(path), size, resize)


def first_readable(paths: Sequence[Path]) -> Path:
    """The first image that decodes, so a run with no readable input stops before any model loads.

    Raises:
        ImageLoadError: None of ``paths`` can be read (the message gives the first reason).
    """
    reasons = []
    for path in paths:
        try:
            open_rgb(path)
            return path
        except ImageLoadError as error:
            reasons.append(str(error))
    first = reasons[0] if reasons else "no paths given"
    raise ImageLoadError(
        f"no readable input: none of the {len(paths)} image file(s) can be read (first: {first}): "
        "pass readable image files"
    )


def load_batch(
    paths: Sequence[Path], size: int, resize: str = DEFAULT_RESIZE
) -> tuple[list[Path], Tensor | None, list[LoadFailure]]:
    """Read what can be read; the rest become failures and the batch goes on without them.

    Returns:
        The paths that loaded, their stacked tensor (or None when none did), and the failures.
    """
    loaded: list[Path] = []
    tensors: list[Tensor] = []
    failures: list[LoadFailure] = []
    for path in paths:
        try:
            tensors.append(load_image(path, size, resize))
            loaded.append(path)
        except ImageLoadError as error:
            failures.append(LoadFailure(path, str(error)))
    return loaded, (torch.stack(tensors) if tensors else None), failures


def load_image_bytes(
    data: bytes, size: int, name: str = "upload", max_pixels: int = MAX_PIXELS, resize: str = DEFAULT_RESIZE
) -> Tensor:
    """Decode an uploaded image from memory as a (3, size, size) tensor in [0, 1].

    The same protections as :func:`open_rgb`, for bytes that never touched the disk.

    Args:
        data: The encoded file (PNG, JPEG, ...).
        size: Side of the returned tensor.
        name: How the image is named in error messages (e.g. the upload's file name).
        max_pixels: Largest accepted width x height.
        resize: ``squash`` or ``letterbox`` (see :func:`to_tensor`).

    Raises:
        ImageLoadError: Empty, corrupt, truncated, non-image or oversized data.
    """
    if not data:
        raise ImageLoadError(f"{name}: the file is empty")
    return to_tensor(_decode(io.BytesIO(data), name, max_pixels), size, resize)
