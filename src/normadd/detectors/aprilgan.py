"""APRIL-GAN's zero-shot anomaly detector (VAND 2023 challenge winner), on the shared CLIP pass.

Anomaly map = sum over tapped layers of the per-layer "abnormal" probability maps at the run size
(518 px for ViT-L-14-336); image score = max of the map (the NAND protocol), or with
``image_score="clip"`` APRIL-GAN's own classification score: the softmax, at CLIP's logit scale
100, of the normalised pooled image embedding against the normal and abnormal text embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from normadd.backbone.clip_encoder import ClipEncoder, ClipFeatures
from normadd.detectors.base import DetectionResult, max_scores
from normadd.detectors.projections import LayerProjections, load_projections
from normadd.detectors.segmentation import segment
from normadd.errors import NormaddError
from normadd.prompts.text_embedding import TextEmbedder
from normadd.prompts.validation import clean_text

IMAGE_SCORES = ("max", "clip")
CLIP_LOGIT_SCALE = 100.0  # APRIL-GAN's test.py: (100.0 * image_features @ text_features).softmax(-1)


class AprilGanDetector:
    """Zero-shot APRIL-GAN: text-patch similarity of projected multi-layer CLIP tokens.

    Args:
        encoder: The CLIP encoder (its tapped layers are the projections' layers).
        class_name: Object name used in the prompts, as the class folder is named ("bottle").
        projections: Learned per-layer projections; CLIP's own head when None (training-free).
        text_embedder: Shared text embedder (and its cache); a new one when None.
        image_score: "max" (max of the map) or "clip" (APRIL-GAN's pooled-embedding score).
    """

    def __init__(
        self,
        encoder: ClipEncoder,
        class_name: str,
        projections: LayerProjections | None = None,
        text_embedder: TextEmbedder | None = None,
        image_score: str = "max",
    ) -> None:
        if image_score not in IMAGE_SCORES:
            raise NormaddError(f"image_score '{image_score}' is unknown: use {' or '.join(IMAGE_SCORES)}")
        self.image_score = image_score
        self._encoder = encoder
        self.class_name = clean_text(class_name, "class name")
        self.projections = projections if projections is not None else LayerProjections.clip_head(encoder)
        self.text_embedder = text_embedder or TextEmbedder(encoder)
        self.normal_embedding = self.text_embedder.normal(self.class_name)
        self.abnormal_embedding = self.text_embedder.abnormal(self.class_name)

    @classmethod
    def from_files(
        cls,
        encoder: ClipEncoder,
        class_name: str,
        projections: str | Path | None = None,
    ) -> AprilGanDetector:
        """Build the detector, loading projections from a checkpoint when one is given."""
        loaded = load_projections(projections, encoder) if projections is not None else None
        return cls(encoder, class_name, loaded)

    @property
    def encoder(self) -> ClipEncoder:
        """The CLIP encoder whose features this detector reads."""
        return self._encoder

    @property
    def input_size(self) -> int:
        """The CLIP run size."""
        return self._encoder.image_size

    @property
    def description(self) -> str:
        """Detector, backbone and projections in one line."""
        return f"APRIL-GAN zero-shot on {self._encoder.description}, {self.projections.description}"

    @torch.inference_mode()
    def project(self, features: ClipFeatures) -> list[Tensor]:
        """Per-layer projected patch tokens."""
        with self._encoder.runtime.autocast():
            return features.projected_by(self.projections)

    @torch.inference_mode()
    def detect_features(self, features: ClipFeatures) -> DetectionResult:
        """Anomaly maps (B, S, S), summed over layers (range 0..L), from shared features."""
        maps = segment(
            self.project(features),
            self.normal_embedding,
            self.abnormal_embedding.unsqueeze(0),
            features.grid_size,
            self.input_size,
            reduce="sum",
        )[:, 0]
        if self.image_score == "clip":
            return DetectionResult(maps=maps, scores=self.clip_scores(features))
        return DetectionResult(maps=maps, scores=max_scores(maps))

    def clip_scores(self, features: ClipFeatures) -> Tensor:
        """APRIL-GAN's image score: P(abnormal) of the pooled embedding against the two texts, (B,)."""
        image = F.normalize(features.image_embedding.float(), dim=-1)
        texts = torch.stack([self.normal_embedding, self.abnormal_embedding]).to(image.device).float()
        return (CLIP_LOGIT_SCALE * image @ F.normalize(texts, dim=-1).T).softmax(dim=-1)[:, 1]

    def detect(self, images: Tensor) -> DetectionResult:
        """Anomaly maps and scores for RGB images in [0, 1] (B, 3, H, W)."""
        features = self._encoder.encode_images(self._encoder.preprocess(images))
        return self.detect_features(features)
