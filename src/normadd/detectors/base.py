"""The one protocol every detector follows.

A detector maps a batch of RGB images in [0, 1], shape (B, 3, H, W), to anomaly maps (B, h, w),
higher = more anomalous, plus one score per image. :class:`~normadd.normality.NormalityAddition`
wraps a detector and is itself one, so evaluation, CLI and service treat "before" and "after"
alike. Detectors built on CLIP also accept precomputed :class:`ClipFeatures`, so one image pass
serves them and the normality detector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from normadd.backbone.clip_encoder import ClipEncoder, ClipFeatures


@dataclass
class DetectionResult:
    """Anomaly maps and image scores of one batch.

    Attributes:
        maps: (B, h, w) anomaly maps, higher = more anomalous.
        scores: (B,) image scores (max of the map for every normadd detector).
    """

    maps: Tensor
    scores: Tensor


@runtime_checkable
class Detector(Protocol):
    """Anything that turns images into anomaly maps and scores."""

    @property
    def input_size(self) -> int:
        """Side of the square images the detector wants (others are resized)."""
        ...

    @property
    def description(self) -> str:
        """One line naming the detector and its weights, for users and output files."""
        ...

    def detect(self, images: Tensor) -> DetectionResult:
        """Anomaly maps and scores for RGB images in [0, 1], shape (B, 3, H, W)."""
        ...


@runtime_checkable
class ClipFeatureDetector(Detector, Protocol):
    """A detector that reads CLIP features, so it can share an image pass with others."""

    @property
    def encoder(self) -> ClipEncoder:
        """The CLIP encoder whose features :meth:`detect_features` reads."""
        ...

    def detect_features(self, features: ClipFeatures) -> DetectionResult:
        """Anomaly maps and scores from features already computed by :attr:`encoder`."""
        ...


def max_scores(maps: Tensor) -> Tensor:
    """Image score = max of each map (the NAND protocol): (B, h, w) -> (B,)."""
    return maps.flatten(1).amax(dim=1)
