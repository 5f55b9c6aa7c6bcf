"""Sized acceptance criteria: a normality lets a defect through only when it is small enough and where allowed.

A normality may carry ``max_area`` and/or ``max_length`` (in pixels of the input image, or in mm
with the line's ``pixel_size_mm``) and a ``region`` mask (where the normality applies, e.g. only
the label area). Its suppression then applies only to the *anomalous regions*: the
8-connected components of ``before > threshold``, found on the map at its own size and measured
in image pixels (each map pixel counts ``(H/h)·(W/w)`` image pixels). A region lets the
normality act when all of:

* the normality covers it: the mean of its suppression map over the region is >= ``cover``
  (0.5 by default);
* its area is <= ``max_area`` and its length — the largest distance between two points of the
  region (maximum Feret diameter of its pixel squares), in image pixels — is <= ``max_length``;
* every one of its pixels is inside the ``region`` mask (a defect crossing the border does not pass).

Elsewhere the normality suppresses nothing. With no limits and no region the suppression map is
returned unchanged, so the result is exactly ``A ⊙ Π_k (1 − s_k A_sup_k)``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import ConvexHull
from torch import Tensor

from normadd.decisions.errors import DecisionError

COVER_DEFAULT = 0.5
ASPECT_TOLERANCE = 0.02  # relative: a region mask and an image whose width/height differ by more are refused
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(px|pixels?|mm)?\s*(2|\^2|²)?\s*$")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Size:
    """A length or an area with its unit: ``px`` (image pixels) or ``mm`` (``mm²`` for an area)."""

    value: float
    unit: str = "px"

    def in_pixels(self, pixel_size_mm: float | None, area: bool, what: str) -> float:
        """The size in image pixels (px² for an area).

        Raises:
            DecisionError: A size in mm and no ``pixel_size_mm`` on the line.
        """
        if self.unit == "px":
            return self.value
        if pixel_size_mm is None:
            raise DecisionError(
                f"{what} is given in mm but the line has no pixel_size_mm: add e.g. 'pixel_size_mm: 0.05' "
                "to the line config, or give the limit in pixels"
            )
        return self.value / pixel_size_mm**2 if area else self.value / pixel_size_mm

    def __str__(self) -> str:
        return f"{self.value:g} {self.unit}"


def parse_size(value: object, what: str, area: bool = False) -> Size | None:
    """A limit from the config: a number (pixels) or text like ``"2 mm"``, ``"4 mm2"``, ``"150 px"``.

    Raises:
        DecisionError: Not a size, negative, NaN or infinite.
    """
    if value is None:
        return None
    example = "'4 mm2' or 150 (px²)" if area else "'2 mm' or 40 (px)"
    if isinstance(value, bool):
        raise DecisionError(f"{what} must be a size, e.g. {example}; got {value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), "px"
    else:
        text = str(value)
        if text.strip().startswith("-"):
            raise DecisionError(f"{what} must be >= 0, got {text[:40]!r}")
        match = _SIZE.match(text)
        if match is None:
            raise DecisionError(f"{what} must be a size, e.g. {example}; got {text[:40]!r}")
        number = float(match.group(1))
        unit = "mm" if match.group(2) == "mm" else "px"
    if not math.isfinite(number):
        raise DecisionError(f"{what} must be a finite size, got {number}")
    if number < 0:
        raise DecisionError(f"{what} must be >= 0, got {number:g}")
    return Size(number, unit)


def check_pixel_size(value: object) -> float | None:
    """``pixel_size_mm`` as a positive float (None when not set).

    Raises:
        DecisionError: Not a positive finite number.
    """
    if value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DecisionError(f"pixel_size_mm must be a positive number of mm, got {str(value)[:40]!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise DecisionError(f"pixel_size_mm must be a positive number of mm per pixel, e.g. 0.05, got {value!r}")
    return number


@dataclass(frozen=True)
class AcceptanceLimits:
    """What a normality may let through.

    Attributes:
        max_area: Largest accepted region area (px² of the input image, or mm²), or None.
        max_length: Largest accepted region length (px of the input image, or mm), or None.
        region: (h, w) bool mask, True where the normality applies, or None for everywhere.
        region_source: Where the mask came from (for messages).
    """

    max_area: Size | None = None
    max_length: Size | None = None
    region: np.ndarray | None = None
    region_source: str = ""

    @property
    def active(self) -> bool:
        """True when anything limits the normality."""
        return self.max_area is not None or self.max_length is not None or self.region is not None

    def check_units(self, pixel_size_mm: float | None, name: str) -> None:
        """Refuse a limit in mm on a line without ``pixel_size_mm``."""
        if self.max_area is not None:
            self.max_area.in_pixels(pixel_size_mm, True, f"max_area of normality '{name}'")
        if self.max_length is not None:
            self.max_length.in_pixels(pixel_size_mm, False, f"max_length of normality '{name}'")

    def describe(self) -> str:
        """``max_area 4 mm, region label.png``-style summary ("" when unlimited)."""
        parts = []
        if self.max_area is not None:
            parts.append(f"max_area {self.max_area}²")
        if self.max_length is not None:
            parts.append(f"max_length {self.max_length}")
        if self.region is not None:
            parts.append(f"region {self.region_source or 'mask'}")
        return ", ".join(parts)


def check_region_aspect(region_shape: Sequence[int], image_size: tuple[int, int], source: str, image: str) -> None:
    """Refuse a region mask whose aspect ratio differs from the image's.

    Args:
        region_shape: (rows, columns) of the mask.
        image_size: (height, width) of the image.
        source: The mask's file, for the message.
        image: The image's name, for the message.

    Raises:
        DecisionError: Aspect ratios differ by more than 2 %.
    """
    mask_ratio = region_shape[1] / region_shape[0]
    image_ratio = image_size[1] / image_size[0]
    if abs(mask_ratio / image_ratio - 1.0) > ASPECT_TOLERANCE:
        raise DecisionError(
            f"region mask {source} is {region_shape[1]}x{region_shape[0]} but image {image} is "
            f"{image_size[1]}x{image_size[0]} (another aspect ratio): draw the mask on an image of the camera's size"
        )


def _resize_region(region: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if region.shape == shape:
        return region.astype(bool)
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(region.astype(np.float32))[None, None], size=shape, mode="nearest"
    )[0, 0]
    return resized.numpy() > 0.5


def region_lengths(
    labels: np.ndarray, count: int, scale: tuple[float, float], wanted: np.ndarray | None = None
) -> np.ndarray:
    """Maximum Feret diameter of each labelled region's pixel squares, scaled by (sy, sx).

    The convex hull of a union of pixel squares is that of the outer corners of each row's
    leftmost and rightmost pixels, so only those corners enter the hull.

    Args:
        labels: (h, w) labels 1..count (0: background).
        count: Number of regions.
        scale: Image pixels per map pixel, (rows, columns).
        wanted: (count,) bool: measure only these regions (the others get 0); all when None.
    """
    lengths = np.zeros(count, dtype=np.float64)
    sy, sx = scale
    for index, box in enumerate(ndimage.find_objects(labels, count)):
        if box is None or (wanted is not None and not wanted[index]):
            continue
        rows, cols = np.nonzero(labels[box] == index + 1)  # row-major: sorted by row, then column
        rows = rows + box[0].start
        cols = cols + box[1].start
        starts = np.r_[0, np.nonzero(np.diff(rows))[0] + 1]
        ends = np.r_[starts[1:] - 1, rows.size - 1]
        row, left, right = rows[starts], cols[starts], cols[ends] + 1
        points = np.concatenate(
            [
                np.stack([row, left], 1),
                np.stack([row + 1, left], 1),
                np.stack([row, right], 1),
                np.stack([row + 1, right], 1),
            ]
        ).astype(np.float64) * np.array([sy, sx])
        points = points[ConvexHull(points).vertices]  # pixel squares: never collinear, always a 2-D hull
        differences = points[:, None, :] - points[None, :, :]
        lengths[index] = float(np.sqrt((differences**2).sum(-1)).max())
    return lengths


class AnomalousRegions:
    """The anomalous regions of one map (8-connected ``before > threshold``), measured once.

    Every limited normality of an image reads the same regions; their lengths are measured the
    first time a normality needs them.
    """

    def __init__(self, before: Tensor | np.ndarray, threshold: float, image_size: tuple[int, int] | None = None):
        anomaly = np.asarray(before, dtype=np.float32)
        self.shape: tuple[int, int] = (int(anomaly.shape[0]), int(anomaly.shape[1]))
        image_h, image_w = image_size or self.shape
        self.scale = (image_h / self.shape[0], image_w / self.shape[1])
        self.labels, self.count = ndimage.label(anomaly > threshold, structure=_EIGHT_CONNECTED)
        flat = self.labels.ravel()
        self._inside = np.flatnonzero(flat)  # regions cover a small part of a map: count only there
        self._inside_labels = flat[self._inside] - 1
        self.pixels = np.bincount(self._inside_labels, minlength=self.count).astype(np.float64)
        self._lengths = np.full(self.count, np.nan)
        self._boxes: np.ndarray | None = None

    def areas(self) -> np.ndarray:
        """(count,) areas in image pixels²."""
        return self.pixels * self.scale[0] * self.scale[1]

    def means(self, values: np.ndarray) -> np.ndarray:
        """(count,) mean of a (h, w) map over each region."""
        weights = values.ravel()[self._inside]
        return np.bincount(self._inside_labels, weights=weights, minlength=self.count) / self.pixels

    def within_length(self, wanted: np.ndarray, max_length: float) -> np.ndarray:
        """(count,) True for ``wanted`` regions whose length is <= ``max_length`` (image pixels).

        The bounding box bounds the length: its longer side (scaled) is a lower bound and its
        diagonal an upper one, so the hull is measured only for regions between the two.
        """
        if self._boxes is None:
            boxes = ndimage.find_objects(self.labels, self.count)
            self._boxes = np.array([[b[0].stop - b[0].start, b[1].stop - b[1].start] for b in boxes], dtype=np.float64)
            self._boxes = self._boxes.reshape(-1, 2) * np.array(self.scale)
        longer = self._boxes.max(axis=1)
        diagonal = np.sqrt((self._boxes**2).sum(axis=1))
        undecided = wanted & (longer <= max_length) & (diagonal > max_length)
        result = wanted & (diagonal <= max_length)
        if undecided.any():
            result |= undecided & (self.lengths(undecided) <= max_length)
        return result

    def lengths(self, wanted: np.ndarray) -> np.ndarray:
        """(count,) lengths in image pixels; measured for ``wanted`` regions not measured yet."""
        missing = wanted & np.isnan(self._lengths)
        if missing.any():
            measured = region_lengths(self.labels, self.count, self.scale, missing)
            self._lengths[missing] = measured[missing]
        return np.where(wanted, self._lengths, np.inf)


def acceptance_mask(
    before: Tensor | np.ndarray,
    suppression: Tensor | np.ndarray,
    threshold: float,
    limits: AcceptanceLimits,
    image_size: tuple[int, int] | None = None,
    pixel_size_mm: float | None = None,
    cover: float = COVER_DEFAULT,
    regions: AnomalousRegions | None = None,
) -> np.ndarray:
    """Where one normality may act on one image: a (h, w) bool mask (see the module docstring).

    Args:
        before: (h, w) anomaly map.
        suppression: (h, w) the normality's map in [0, 1].
        threshold: The line's threshold (regions are ``before > threshold``).
        limits: The normality's limits.
        image_size: (height, width) of the input image; the map's own size when None.
        pixel_size_mm: mm per image pixel, for limits in mm.
        cover: Mean suppression over a region for the normality to cover it.
        regions: The image's regions when already found (for ``before``, ``threshold`` and
            ``image_size``), shared by the normalities of one image.

    Raises:
        DecisionError: A limit in mm without ``pixel_size_mm``.
    """
    if regions is None:
        regions = AnomalousRegions(before, threshold, image_size)
    if regions.count == 0:
        return np.zeros(regions.shape, dtype=bool)
    accept = regions.means(np.asarray(suppression, dtype=np.float32)) >= cover
    if limits.max_area is not None:
        accept &= regions.areas() <= limits.max_area.in_pixels(pixel_size_mm, True, "max_area")
    if limits.region is not None:
        outside = ~_resize_region(limits.region, regions.shape)
        accept &= regions.means(outside.astype(np.float32)) == 0
    if limits.max_length is not None and accept.any():
        max_length = limits.max_length.in_pixels(pixel_size_mm, False, "max_length")
        accept &= regions.within_length(accept, max_length)
    lookup = np.r_[False, accept]
    return lookup[regions.labels]


def limited_suppression(
    before: Tensor,
    suppression: Tensor,
    limits: Sequence[AcceptanceLimits | None],
    threshold: float,
    image_sizes: Sequence[tuple[int, int] | None] | None = None,
    pixel_size_mm: float | None = None,
    cover: float = COVER_DEFAULT,
) -> Tensor:
    """The suppression maps as limited: each limited normality's map times its acceptance mask.

    Args:
        before: (B, h, w) anomaly maps.
        suppression: (B, K, h, w) normality maps.
        limits: K entries; None or inactive ones leave their channel exactly as it is.
        threshold: The line's threshold.
        image_sizes: B input image sizes (height, width); the map size when None.
        pixel_size_mm: mm per image pixel.
        cover: See :func:`acceptance_mask`.
    """
    if len(limits) != suppression.shape[1]:
        raise ValueError(f"{len(limits)} limits for {suppression.shape[1]} normalities")
    if not any(item is not None and item.active for item in limits):
        return suppression
    # numpy throughout: small per-image steps, no torch dispatch or thread pool per map
    before_np = before.detach().float().cpu().numpy()
    limited = suppression.detach().float().cpu().numpy().copy()
    for b in range(limited.shape[0]):
        size = image_sizes[b] if image_sizes is not None else None
        regions = AnomalousRegions(before_np[b], threshold, size)  # found once, read by every normality
        for k, item in enumerate(limits):
            if item is None or not item.active:
                continue
            mask = acceptance_mask(before_np[b], limited[b, k], threshold, item, size, pixel_size_mm, cover, regions)
            limited[b, k] *= mask
    return torch.from_numpy(limited).to(suppression)


def load_region(path: str | Path) -> np.ndarray:
    """A region mask from an image file: True where the pixel is bright (grey level > 127).

    Read once per file version (path, size, modification time): a service checks it per request.

    Raises:
        DecisionError: Missing or unreadable file, or a mask with no pixel inside.
    """
    path = Path(path)
    if not path.is_file():
        raise DecisionError(f"region mask {path} does not exist: fix the normality's 'region' path")
    stat = path.stat()
    return _read_region(str(path), stat.st_size, stat.st_mtime_ns).copy()


@functools.lru_cache(maxsize=64)
def _read_region(name: str, size: int, mtime_ns: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    path = Path(name)
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DecisionError(f"region mask {path} cannot be read as an image ({error}): save it as a PNG") from None
    region = array > 127
    if not region.any():
        raise DecisionError(f"region mask {path} has no white pixel: paint where the normality applies in white")
    return region
