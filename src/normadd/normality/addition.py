"""``NormalityAddition``: a detector wrapped with added normalities, itself a detector.

When the wrapped detector reads CLIP features from the same encoder as the normality detector,
each image goes through CLIP once and both read the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from normadd.backbone.clip_encoder import ClipFeatures
from normadd.detectors.base import ClipFeatureDetector, DetectionResult, Detector, max_scores
from normadd.errors import NormaddError
from normadd.normality.suppression import check_map, keep_factor, resize_maps
from normadd.normality.text_normality import AddedNormality, NormalityDetector, parse_normality


@dataclass
class AdditionResult:
    """Everything one batch gives, before and after.

    Attributes:
        before: The detector's maps resized to the suppression size (B, H, W) (paper protocol, step 5).
        before_scores: (B,) max of ``before``, so before and after are scored at one resolution and
            adding nothing changes no score.
        detector_scores: (B,) the detector's own scores (max of its native-size map).
        suppression: (B, K, H, W) ``A_sup`` per normality.
        keep: (B, H, W) ``Π_k (1 − s_k A_sup_k)``.
        after: (B, H, W) ``before ⊙ keep``.
        after_scores: (B,) max of ``after``.
        names: Normality names, in the order of ``suppression``'s channels.
        projected: Per tapped layer, the normality detector's projected patch tokens (B, N, D),
            when asked for (what a retained image keeps so a new text needs no image pass).
        grid_size: (rows, cols) of the patch grid of ``projected``.
    """

    before: Tensor
    before_scores: Tensor
    detector_scores: Tensor
    suppression: Tensor
    keep: Tensor
    after: Tensor
    after_scores: Tensor
    names: list[str]
    projected: list[Tensor] | None = None
    grid_size: tuple[int, int] | None = None


class NormalityAddition:
    """A detector with added normalities: ``A_final = A ⊙ Π_k (1 − s_k · A_sup_k)``.

    Args:
        detector: Any :class:`Detector`.
        normalities: Texts ("scratch", "scratch:0.5") or ready :class:`AddedNormality` items.
        normality_detector: Needed when ``detector`` is not CLIP-based; when it is, one is built
            on the detector's own encoder, projections and class name.
    """

    def __init__(
        self,
        detector: Detector,
        normalities: list[str | AddedNormality] | tuple[str | AddedNormality, ...] = (),
        normality_detector: NormalityDetector | None = None,
    ) -> None:
        self.detector = detector
        if normality_detector is None:
            if not isinstance(detector, ClipFeatureDetector):
                raise NormaddError(
                    "this detector does not read CLIP features: pass normality_detector=NormalityDetector(...)"
                )
            normality_detector = NormalityDetector(
                detector.encoder,
                getattr(detector, "class_name", "object"),
                projections=getattr(detector, "projections", None),
                text_embedder=getattr(detector, "text_embedder", None),
            )
        self.normality_detector = normality_detector
        self.normalities: dict[str, AddedNormality] = {}
        for item in normalities:
            if isinstance(item, AddedNormality):
                self._insert(item)
            else:
                text, strength = parse_normality(item)
                self.add(text, strength)

    def _insert(self, normality: AddedNormality) -> None:
        if not 0.0 <= normality.strength <= 1.0:
            raise ValueError(f"strength of normality '{normality.name}' must be in [0, 1], got {normality.strength}")
        if normality.name in self.normalities:
            raise NormaddError(f"normality '{normality.name}' is already added: remove it first or pick another name")
        self.normalities[normality.name] = normality

    def add(self, text: str, strength: float = 1.0, name: str | None = None) -> AddedNormality:
        """Add a normality by text; returns it (with its phrases and ``f_add``)."""
        normality = self.normality_detector.make_normality(text, strength, name)
        self._insert(normality)
        return normality

    def add_example(
        self,
        images: Sequence[str | Path] | Tensor,
        masks: Sequence[str | Path | Tensor | None] | Tensor | None = None,
        strength: float = 1.0,
        name: str | None = None,
        resize: str = "squash",
    ) -> AddedNormality:
        """Add a visual normality shown by example images of the defect, optionally masked.

        Args:
            images: Image files, or a (K, 3, H, W) tensor in [0, 1].
            masks: None (whole images), or one per image: a file, a (H, W) tensor, or None.
            strength: s in [0, 1].
            name: Key used to remove it; ``example:<first image>`` when None.
            resize: ``squash`` or ``letterbox``, as the inspected images.

        Raises:
            InvalidMaskError: A mask of another size than its image, or an empty mask.
        """
        normality = self.normality_detector.make_example_normality(images, masks, strength, name, resize)
        self._insert(normality)
        return normality

    def remove(self, name: str) -> AddedNormality:
        """Remove a normality by name.

        Raises:
            NormaddError: No normality of that name.
        """
        if name not in self.normalities:
            known = ", ".join(self.normalities) or "none"
            raise NormaddError(f"no normality named '{name}' (added: {known})")
        return self.normalities.pop(name)

    @property
    def input_size(self) -> int:
        """The wrapped detector's input size."""
        return self.detector.input_size

    @property
    def description(self) -> str:
        """The wrapped detector and its added normalities in one line."""
        added = ", ".join(f"{n.name}:{n.strength:g}" for n in self.normalities.values()) or "none"
        return f"{self.detector.description}; added normalities: {added}"

    @property
    def shares_clip_pass(self) -> bool:
        """True when detector and normality detector read one CLIP pass."""
        return (
            isinstance(self.detector, ClipFeatureDetector) and self.detector.encoder is self.normality_detector.encoder
        )

    @torch.inference_mode()
    def explain(
        self, images: Tensor, keep_projected: bool = False, features: ClipFeatures | None = None
    ) -> AdditionResult:
        """Maps before, suppression per normality and after, for RGB images in [0, 1].

        Args:
            images: (B, 3, H, W) RGB in [0, 1].
            keep_projected: Also return the normality detector's projected tokens (read from the
                same CLIP pass; projected once, shared with the detector when it is APRIL-GAN).
            features: The normality detector's encoder's features of ``images``, when a caller
                already ran that pass (several lines on one encoder share it); None runs it here.

        Raises:
            ValueError: ``features`` of another number of images, or not from this encoder's layers.
        """
        encoder = self.normality_detector.encoder
        if features is not None and (features.batch_size != images.shape[0] or features.layers != encoder.spec.layers):
            raise ValueError(
                f"features of {features.batch_size} images at layers {list(features.layers)} given for "
                f"{images.shape[0]} images on an encoder tapping {list(encoder.spec.layers)}"
            )
        if self.shares_clip_pass:
            assert isinstance(self.detector, ClipFeatureDetector)
            if features is None:
                features = encoder.encode_images(encoder.preprocess(images))
            before = self.detector.detect_features(features)
        else:
            before = self.detector.detect(images)
            wanted = bool(self.normalities) or keep_projected
            if features is None and wanted:
                features = encoder.encode_images(encoder.preprocess(images))
        check_map(before.maps, "the detector's anomaly map")
        normalities = list(self.normalities.values())
        size = self.normality_detector.size
        before_maps = resize_maps(before.maps.float(), size).cpu()
        if features is None:
            suppression = torch.zeros(before_maps.shape[0], 0, size, size)
        else:
            suppression = self.normality_detector.suppression_maps(features, normalities).cpu()
        strengths = torch.tensor([n.strength for n in normalities], dtype=torch.float32)
        keep = keep_factor(suppression, strengths)
        after = before_maps * keep
        return AdditionResult(
            before=before_maps,
            before_scores=max_scores(before_maps),
            detector_scores=before.scores.float().cpu(),
            suppression=suppression,
            keep=keep,
            after=after,
            after_scores=max_scores(after),
            names=[n.name for n in normalities],
            projected=[t.cpu() for t in self.normality_detector.project(features)]
            if keep_projected and features is not None
            else None,
            grid_size=features.grid_size if keep_projected and features is not None else None,
        )

    def detect(self, images: Tensor) -> DetectionResult:
        """The after maps and scores (this wrapper is itself a detector)."""
        result = self.explain(images)
        return DetectionResult(maps=result.after, scores=result.after_scores)
