"""The normality detector: APRIL-GAN's segmenter with ``f_add`` in place of ``f_abnormal``.

``A_sup`` for one added normality = mean over tapped layers of softmax(100 · tokens · [f_normal,
f_add]) keeping the ``f_add`` channel, at 256 × 256 (the paper's size). We *average* the layers
(APRIL-GAN sums its anomaly map) so that ``A_sup`` lies in [0, 1] and ``1 − A_sup`` is a valid
keep factor in the paper's formula. A visual normality (:mod:`normadd.normality.visual`) gives its
own channel from example images; text and visual channels come back in the order they were added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from normadd.backbone.clip_encoder import ClipEncoder, ClipFeatures
from normadd.detectors.projections import LayerProjections
from normadd.detectors.segmentation import segment
from normadd.errors import NormaddError
from normadd.images import DEFAULT_RESIZE
from normadd.normality.visual import PatchMemory, build_memory, example_name, load_examples, visual_suppression
from normadd.prompts.phrases import OfflinePhraseGenerator, PhraseGenerator
from normadd.prompts.text_embedding import TextEmbedder
from normadd.prompts.validation import clean_text

SUPPRESSION_SIZE = 256


@dataclass
class AddedNormality:
    """One defect type that now counts as normal.

    Attributes:
        name: Key used to remove it (the cleaned text unless given).
        text: The defect text as the user wrote it, cleaned.
        strength: s in [0, 1]; 0 leaves the anomaly map unchanged.
        phrases: State phrases the prompt generator wrote.
        embedding: ``f_add`` (D,), the ensemble embedding of phrases x templates (text kind).
        kind: "text" (named by text) or "visual" (shown by example images).
        memory: The example patches of a visual normality.
    """

    name: str
    text: str
    strength: float
    phrases: list[str] = field(default_factory=list)
    embedding: Tensor | None = None
    kind: str = "text"
    memory: PatchMemory | None = None


def parse_normality(spec: str) -> tuple[str, float]:
    """Read ``"text"`` or ``"text:strength"`` (as typed after ``--add``).

    Raises:
        ValueError: A strength that is not a number in [0, 1].
    """
    text, sep, tail = spec.rpartition(":")
    if not sep:
        return spec, 1.0
    try:
        strength = float(tail)
    except ValueError:
        return spec, 1.0  # a colon that is part of the text
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength in '{spec}' must be in [0, 1], e.g. 'scratch:0.5'")
    return text, strength


class NormalityDetector:
    """Suppression maps ``A_sup`` of added normalities from CLIP features.

    Args:
        encoder: The CLIP encoder.
        class_name: Object name used in the prompts.
        projections: Per-layer projections (the detector's, when it is APRIL-GAN).
        text_embedder: Shared text embedder and cache.
        phrase_generator: Writes state phrases; the offline generator when None.
        size: Side of the suppression maps (256 in the paper).
    """

    def __init__(
        self,
        encoder: ClipEncoder,
        class_name: str,
        projections: LayerProjections | None = None,
        text_embedder: TextEmbedder | None = None,
        phrase_generator: PhraseGenerator | None = None,
        size: int = SUPPRESSION_SIZE,
    ) -> None:
        self.encoder = encoder
        self.class_name = clean_text(class_name, "class name")
        self.projections = projections if projections is not None else LayerProjections.clip_head(encoder)
        self.text_embedder = text_embedder or TextEmbedder(encoder)
        self.phrase_generator = phrase_generator or OfflinePhraseGenerator()
        self.size = size
        self.normal_embedding = self.text_embedder.normal(self.class_name)

    def make_normality(self, text: str, strength: float = 1.0, name: str | None = None) -> AddedNormality:
        """Write the phrases of ``text`` and encode ``f_add`` (cached per backbone/class/text).

        Raises:
            InvalidTextError: Empty or over-long text.
            ValueError: ``strength`` outside [0, 1].
        """
        cleaned = clean_text(text)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        phrases = self.phrase_generator.phrases(self.class_name, cleaned)
        embedding = self.text_embedder.embed_phrases(phrases)
        return AddedNormality(name or cleaned, cleaned, float(strength), phrases, embedding)

    def make_example_normality(
        self,
        images: Sequence[str | Path] | Tensor,
        masks: Sequence[str | Path | Tensor | None] | Tensor | None = None,
        strength: float = 1.0,
        name: str | None = None,
        resize: str = DEFAULT_RESIZE,
    ) -> AddedNormality:
        """A visual normality from example images of the now-acceptable defect (optionally masked).

        Args:
            images: Image files, or a (K, 3, H, W) tensor in [0, 1].
            masks: None (whole images), or one mask per image: a file, a (H, W) tensor, or None.
            strength: s in [0, 1].
            name: Key used to remove it; ``example:<first image>`` when None.
            resize: ``squash`` or ``letterbox``, as the line's inspected images.

        Raises:
            InvalidMaskError: A mask of another size than its image, or an empty mask.
            ValueError: ``strength`` outside [0, 1].
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        examples = load_examples(images, masks, self.encoder.image_size, resize)
        memory = build_memory(self.encoder, examples)
        text = "examples " + ", ".join(examples.sources)
        return AddedNormality(name or example_name(examples), text[:120], float(strength), kind="visual", memory=memory)

    @torch.inference_mode()
    def project(self, features: ClipFeatures) -> list[Tensor]:
        """Per-layer projected patch tokens (what :meth:`suppression_from_projected` reads)."""
        with self.encoder.runtime.autocast():
            return features.projected_by(self.projections)

    @torch.inference_mode()
    def suppression_from_projected(
        self,
        projected: list[Tensor],
        grid_size: tuple[int, int],
        normalities: list[AddedNormality],
        patch_tokens: list[Tensor] | None = None,
    ) -> Tensor:
        """``A_sup`` of every normality: (B, K, size, size) in [0, 1], one channel per normality in order.

        Evaluation caches projected tokens per image and calls this once per group text. Text
        normalities read ``projected``; visual ones read the raw ``patch_tokens``.

        Raises:
            NormaddError: A visual normality without ``patch_tokens``.
        """
        if not normalities:
            return torch.zeros(projected[0].shape[0], 0, self.size, self.size)
        texts = [i for i, n in enumerate(normalities) if n.kind != "visual"]
        if len(texts) == len(normalities):  # text only: one batched pass, as before
            embeddings = torch.stack([n.embedding for n in normalities if n.embedding is not None])
            return segment(projected, self.normal_embedding, embeddings, grid_size, self.size, "mean")
        if patch_tokens is None:
            raise NormaddError(
                "visual normalities need the raw patch tokens: call suppression_maps(features, ...) "
                "or pass patch_tokens=features.patch_tokens"
            )
        channels: list[Tensor | None] = [None] * len(normalities)
        if texts:
            embeddings = torch.stack([normalities[i].embedding for i in texts])  # type: ignore[misc]
            maps = segment(projected, self.normal_embedding, embeddings, grid_size, self.size, "mean")
            for channel, index in enumerate(texts):
                channels[index] = maps[:, channel]
        for index, normality in enumerate(normalities):
            if normality.kind == "visual":
                assert normality.memory is not None
                channels[index] = visual_suppression(patch_tokens, normality.memory, grid_size, self.size)
        return torch.stack([c for c in channels if c is not None], dim=1)

    def suppression_maps(self, features: ClipFeatures, normalities: list[AddedNormality]) -> Tensor:
        """``A_sup`` of every normality: (B, K, size, size) in [0, 1]."""
        if not normalities:
            return torch.zeros(features.batch_size, 0, self.size, self.size)
        return self.suppression_from_projected(
            self.project(features), features.grid_size, normalities, patch_tokens=features.patch_tokens
        )
