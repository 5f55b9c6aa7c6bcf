"""Anomaly maps another system already wrote, read back as a normadd detector (``--detector maps``).

One map per image in a folder (searched recursively), matched by relative path: a map's path under
the folder, without its extension, is compared with the image's path from the end, so
``maps/broken_large/000.npy`` belongs to ``…/test/broken_large/000.png`` and not to
``…/test/contamination/000.png``. The map sharing the most trailing folders with the image wins;
the file stem alone is the fallback (a flat folder of uniquely named maps); a tie is refused with
one line naming the candidates, never guessed. Formats: ``.npy`` (any float or integer array),
``.tif``/``.tiff`` (float or integer), 8-bit ``.png`` (/255) or 16-bit ``.png`` (/65535). A map
must be 2-D with its image's aspect ratio (it is resized to the detector's size) and finite; a
missing map, NaN or a wrong shape is one error line naming the file and the fix.

Maps are matched to images by path, which the :class:`~normadd.detectors.base.Detector` protocol
does not carry: the inspection loop calls :meth:`SavedMapsDetector.prepare_batch` with the paths of
each batch before running it, and :meth:`SavedMapsDetector.check_images` validates every map up front.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from torch import Tensor

from normadd.detectors.base import DetectionResult, max_scores
from normadd.errors import InvalidMapError

MAP_SUFFIXES = (".npy", ".tif", ".tiff", ".png")
ASPECT_TOLERANCE = 0.02


def read_map(path: Path) -> np.ndarray:
    """One map file as a float32 array (8/16-bit PNG scaled to [0, 1]).

    Raises:
        InvalidMapError: The file cannot be read.
    """
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
            return np.asarray(array, dtype=np.float32)
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except (OSError, ValueError) as error:
        raise InvalidMapError(f"map {path} cannot be read ({type(error).__name__}): write it again") from None
    if path.suffix.lower() == ".png":
        if mode.startswith("I;16") or mode == "I" or array.dtype == np.uint16:
            return array.astype(np.float32) / 65535.0
        if array.dtype == np.uint8:
            return array.astype(np.float32) / 255.0
    return array.astype(np.float32)


def _key(parts: Sequence[str]) -> tuple[str, ...]:
    """Path parts compared case-sensitively, without the file's extension."""
    return (*parts[:-1], Path(parts[-1]).stem)


def _shared_tail(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """How many trailing parts two keys share (0 when the stems differ)."""
    count = 0
    for left, right in zip(reversed(a), reversed(b), strict=False):
        if left != right:
            break
        count += 1
    return count


class SavedMapsDetector:
    """Reads each image's anomaly map from ``maps_dir``, matched by relative path (stem as fallback).

    Args:
        maps_dir: Folder of maps (searched recursively).
        input_size: Side of the square maps this detector returns (they are resized bilinearly).
    """

    def __init__(self, maps_dir: str | Path, input_size: int = 256) -> None:
        self.maps_dir = Path(maps_dir)
        if not self.maps_dir.is_dir():
            raise InvalidMapError(f"maps folder {self.maps_dir} does not exist: pass --maps DIR of saved anomaly maps")
        self._input_size = input_size
        self.index: dict[str, list[tuple[tuple[str, ...], Path]]] = {}  # stem -> (relative key, path)
        for path in sorted(self.maps_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in MAP_SUFFIXES:
                key = _key(path.relative_to(self.maps_dir).parts)
                self.index.setdefault(key[-1], []).append((key, path))
        if not self.index:
            raise InvalidMapError(
                f"maps folder {self.maps_dir} holds no maps ({', '.join(MAP_SUFFIXES)}): write one map per image"
            )
        self._batch: list[Path] = []

    @property
    def input_size(self) -> int:
        """Side of the square maps returned (images are loaded at this size too)."""
        return self._input_size

    @property
    def description(self) -> str:
        """Detector and folder in one line."""
        return f"saved anomaly maps from {self.maps_dir}"

    def map_path(self, image: Path) -> Path:
        """The map file of an image: the one sharing the most trailing path parts with it.

        Raises:
            InvalidMapError: No map has the image's file stem, or several match it equally well.
        """
        image_key = _key(Path(image).parts)
        candidates = self.index.get(image_key[-1], [])
        if not candidates:
            raise InvalidMapError(
                f"no map for image {image} in {self.maps_dir} (expected {image_key[-1]}.npy, .tiff or .png): "
                "write its map or leave the image out"
            )
        shared = [_shared_tail(key, image_key) for key, _ in candidates]
        best = max(shared)
        winners = [path for (_, path), count in zip(candidates, shared, strict=True) if count == best]
        if len(winners) > 1:
            names = ", ".join(str(p.relative_to(self.maps_dir)) for p in winners[:4])
            more = f" and {len(winners) - 4} more" if len(winners) > 4 else ""
            raise InvalidMapError(
                f"image {image} matches {len(winners)} maps equally well ({names}{more}) in {self.maps_dir}: "
                "keep the images' folder structure under the maps folder (e.g. broken_large/000.npy) "
                "and one map per image"
            )
        return winners[0]

    def load_map(self, image: Path) -> Tensor:
        """The checked map of one image, (input_size, input_size).

        Raises:
            InvalidMapError: Missing map, unreadable, not 2-D, another aspect ratio than the image, or NaN/inf.
        """
        path = self.map_path(image)
        array = read_map(path)
        squeezed = np.squeeze(array)
        if squeezed.ndim != 2:
            raise InvalidMapError(
                f"map {path} has shape {array.shape}, not one 2-D map (H, W): save a single-channel map per image"
            )
        if not np.isfinite(squeezed).all():
            raise InvalidMapError(f"map {path} has NaN or infinite values: fix the detector that wrote it")
        image_path = Path(image)
        if image_path.is_file():
            with Image.open(image_path) as picture:
                width, height = picture.size
            map_aspect = squeezed.shape[1] / squeezed.shape[0]
            if abs(map_aspect - width / height) > ASPECT_TOLERANCE * (width / height):
                raise InvalidMapError(
                    f"map {path} is {squeezed.shape[1]}x{squeezed.shape[0]} but image {image_path} is "
                    f"{width}x{height}: save maps covering the whole image (same aspect ratio)"
                )
        tensor = torch.from_numpy(np.ascontiguousarray(squeezed)).float()[None, None]
        return F.interpolate(tensor, size=(self._input_size,) * 2, mode="bilinear", align_corners=False)[0, 0]

    def check_images(self, images: Sequence[Path]) -> None:
        """Validate the maps of all ``images`` before a run (raises on the first bad one)."""
        for image in images:
            self.load_map(Path(image))

    def prepare_batch(self, images: Sequence[Path]) -> None:
        """Name the images of the next :meth:`detect` call, in batch order."""
        self._batch = [Path(p) for p in images]

    def detect(self, images: Tensor) -> DetectionResult:
        """The saved maps of the images named by the last :meth:`prepare_batch`.

        Raises:
            InvalidMapError: No or another number of paths was prepared, or a map is bad.
        """
        if len(self._batch) != images.shape[0]:
            raise InvalidMapError(
                f"saved maps need the image paths of each batch ({len(self._batch)} prepared for "
                f"{images.shape[0]} images): call prepare_batch(paths) before detect"
            )
        maps = torch.stack([self.load_map(path) for path in self._batch])
        self._batch = []
        return DetectionResult(maps=maps, scores=max_scores(maps))
