"""A line's decision settings applied to a batch: limits, then verdicts and ``accepted_by``.

:class:`DecisionPolicy` holds the threshold (with the score scale it was set for), the line's
current score scale, and each normality's acceptance limits. :meth:`DecisionPolicy.apply` takes
an :class:`~normadd.normality.addition.AdditionResult` and returns it with the limited
suppression applied (unchanged when no normality has limits) and one
:class:`~normadd.decisions.verdicts.Decision` per image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from normadd.config import LineConfig, NormalitySetting
from normadd.decisions.errors import DecisionError
from normadd.decisions.limits import (
    AcceptanceLimits,
    check_region_aspect,
    limited_suppression,
    load_region,
    parse_size,
)
from normadd.decisions.scale import score_scale, stale_reason
from normadd.decisions.thresholds import check_threshold
from normadd.decisions.verdicts import Decision, decide_batch, scores_without_each, undecided
from normadd.detectors.base import max_scores
from normadd.normality.addition import AdditionResult
from normadd.normality.suppression import keep_factor

LIMIT_KEYS = ("max_area", "max_length", "region")
NO_THRESHOLD = (
    "the line has no threshold: calibrate one (normadd calibrate) or set it "
    "(threshold: in the line YAML, normadd line set-threshold)"
)


@dataclass(frozen=True)
class ThresholdSetting:
    """A threshold as stored: its value and the score scale it was set for.

    Attributes:
        value: NG when a score is above it.
        scale: The detector identity (:func:`~normadd.decisions.scale.score_scale`) it was set
            for; None when unknown (then taken to be meant for the current detector).
        method: ``set`` (given by a person), ``false-reject`` or ``f1`` (calibrated).
        details: How it was found (rate, image counts …).
    """

    value: float
    scale: dict[str, str] | None = None
    method: str = "set"
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", check_threshold(self.value))


def limits_from_mapping(name: str, data: Mapping[str, Any] | None) -> AcceptanceLimits:
    """A normality's :class:`AcceptanceLimits` from ``max_area``/``max_length``/``region`` values.

    Raises:
        DecisionError: A bad size, or a region mask that cannot be read.
    """
    data = data or {}
    region_path = data.get("region")
    return AcceptanceLimits(
        max_area=parse_size(data.get("max_area"), f"max_area of normality '{name}'", area=True),
        max_length=parse_size(data.get("max_length"), f"max_length of normality '{name}'"),
        region=load_region(region_path) if region_path else None,
        region_source=str(region_path or ""),
    )


def setting_limits(setting: NormalitySetting) -> dict[str, Any] | None:
    """The limits of a configured normality as a mapping (None when it has none)."""
    data = {key: getattr(setting, key) for key in LIMIT_KEYS if getattr(setting, key) is not None}
    return data or None


@dataclass
class DecidedResult:
    """A batch's maps and scores as decided, and one decision per image."""

    result: AdditionResult
    decisions: list[Decision]


@dataclass
class DecisionPolicy:
    """What a line decides with.

    Attributes:
        threshold: The threshold, or None.
        scale: The line's current score scale.
        limits: Acceptance limits per normality name (normalities not named are unlimited).
        pixel_size_mm: mm per image pixel (for limits in mm).
    """

    threshold: ThresholdSetting | None
    scale: dict[str, str]
    limits: dict[str, AcceptanceLimits] = field(default_factory=dict)
    pixel_size_mm: float | None = None

    @classmethod
    def from_config(
        cls,
        config: LineConfig,
        threshold: ThresholdSetting | None = None,
        limits: Mapping[str, Mapping[str, Any] | None] | None = None,
    ) -> DecisionPolicy:
        """The policy of a line config.

        Args:
            config: The line (its ``threshold``/``threshold_scale`` and normalities' limits).
            threshold: A stored threshold that takes the place of the config's (the registry's).
            limits: Limits per normality name that take the place of the config's.

        Raises:
            DecisionError: Bad limits, an unreadable region mask, or a limit in mm without
                ``pixel_size_mm``.
        """
        if threshold is None and config.threshold is not None:
            threshold = ThresholdSetting(config.threshold, config.threshold_scale, "config")
        if limits is None:
            limits = {(s.name or s.text): setting_limits(s) for s in config.normalities}
        parsed = {name: limits_from_mapping(name, data) for name, data in limits.items() if data}
        for name, item in parsed.items():
            item.check_units(config.pixel_size_mm, name)
        return cls(threshold, score_scale(config), parsed, config.pixel_size_mm)

    @property
    def reason(self) -> str | None:
        """Why this policy cannot decide (one line), or None when it can."""
        if self.threshold is None:
            return NO_THRESHOLD
        return stale_reason(self.threshold.scale, self.scale)

    @property
    def value(self) -> float | None:
        """The threshold when it can be used, else None."""
        return None if self.reason is not None or self.threshold is None else self.threshold.value

    @property
    def has_limits(self) -> bool:
        """True when any normality has limits or a region."""
        return any(item.active for item in self.limits.values())

    def check_images(self, sizes: Sequence[tuple[int, int]], names: Sequence[str]) -> None:
        """Refuse images whose aspect ratio differs from a region mask's.

        Raises:
            DecisionError: The first mismatch, naming the mask and the image.
        """
        for name, item in self.limits.items():
            if item.region is None:
                continue
            for size, image in zip(sizes, names, strict=True):
                check_region_aspect(item.region.shape, size, item.region_source or f"of '{name}'", image)

    def apply(
        self,
        result: AdditionResult,
        strengths: Sequence[float],
        image_sizes: Sequence[tuple[int, int] | None] | None = None,
    ) -> DecidedResult:
        """Limits, verdicts and ``accepted_by`` for one batch.

        Without a usable threshold, normalities with limits suppress nothing (their regions
        cannot be found) and every verdict is undecided with the reason.

        Args:
            result: The batch's maps and scores (``result.names`` in channel order).
            strengths: The strength of each normality, in ``result.names`` order.
            image_sizes: (height, width) of each input image, for limits in image pixels or mm.
        """
        names = list(result.names)
        if len(strengths) != len(names):
            raise DecisionError(f"{len(strengths)} strengths for {len(names)} normalities")
        threshold = self.value
        items = [self.limits.get(name) for name in names]
        suppression = result.suppression
        if any(item is not None and item.active for item in items):
            if threshold is None:
                keep_channel = torch.tensor([not (item is not None and item.active) for item in items])
                suppression = suppression * keep_channel.view(1, -1, 1, 1).to(suppression)
            else:
                suppression = limited_suppression(
                    result.before, suppression, items, threshold, image_sizes, self.pixel_size_mm
                )
            strength_tensor = torch.tensor(list(strengths), dtype=torch.float32)
            keep = keep_factor(suppression, strength_tensor)
            after = result.before * keep
            result = dataclasses.replace(
                result, suppression=suppression, keep=keep, after=after, after_scores=max_scores(after)
            )
        if threshold is None:
            reason = self.reason or NO_THRESHOLD
            return DecidedResult(result, [undecided(reason) for _ in range(result.before.shape[0])])
        without = scores_without_each(result.before, result.suppression, torch.tensor(list(strengths)))
        decisions = decide_batch(result.before_scores, result.after_scores, threshold, names, strengths, without)
        return DecidedResult(result, decisions)


def image_size(source: str | Path | bytes) -> tuple[int, int]:
    """(height, width) of an image file or encoded bytes, read from its header only.

    Raises:
        DecisionError: Not readable as an image.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DecisionError(f"cannot read the size of image {str(source)[:80]}: {error}") from None
    return height, width
