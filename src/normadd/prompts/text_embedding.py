"""Prompt-ensemble text embeddings (``f_normal``, ``f_abnormal``, ``f_add``), cached.

An ensemble embedding is APRIL-GAN's: encode every state phrase in every template, L2-normalise
each sentence embedding, average, L2-normalise the mean. The cache (memory, then disk) is keyed
by backbone and weights, the phrases and the templates, so a normality is encoded once.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from normadd.backbone.clip_encoder import ClipEncoder
from normadd.cache import atomic_write_bytes, cache_dir, cache_key
from normadd.prompts.templates import (
    ABNORMAL_STATES,
    NORMAL_STATES,
    TEMPLATES,
    expand_templates,
    fill_states,
)

CACHE_VERSION = 1


def ensemble_embedding(sentence_embeddings: Tensor) -> Tensor:
    """Mean of the L2-normalised sentence embeddings (N, D), L2-normalised again -> (D,)."""
    return F.normalize(F.normalize(sentence_embeddings, dim=-1).mean(dim=0), dim=-1)


class TextEmbedder:
    """Turns state phrases into ensemble embeddings with one encoder, caching each result."""

    def __init__(
        self,
        encoder: ClipEncoder,
        templates: Sequence[str] = TEMPLATES,
        disk_cache: bool = True,
    ) -> None:
        self.encoder = encoder
        self.templates = tuple(templates)
        self.disk_cache = disk_cache
        self._memory: dict[str, Tensor] = {}
        self.encoded_prompts = 0  # prompts actually sent through the text tower, for tests/benchmarks

    def embed_phrases(self, phrases: Sequence[str]) -> Tensor:
        """Ensemble embedding (D,) of ``phrases`` in every template."""
        if not phrases:
            raise ValueError("at least one phrase is needed")
        key = cache_key(CACHE_VERSION, self.encoder.identity, list(phrases), self.templates)
        if key in self._memory:
            return self._memory[key]
        path = cache_dir("text") / f"{key}.pt" if self.disk_cache else None
        if path is not None and path.is_file():
            embedding = torch.load(path, map_location="cpu", weights_only=True)
        else:
            sentences = expand_templates(phrases, self.templates)
            embedding = ensemble_embedding(self.encoder.encode_texts(sentences))
            self.encoded_prompts += len(sentences)
            if path is not None:
                buffer = io.BytesIO()
                torch.save(embedding, buffer)
                atomic_write_bytes(path, buffer.getvalue())
        self._memory[key] = embedding
        return embedding

    def normal(self, object_name: str) -> Tensor:
        """``f_normal``: APRIL-GAN's 7 normal states of the object in every template."""
        return self.embed_phrases(fill_states(NORMAL_STATES, object_name))

    def abnormal(self, object_name: str) -> Tensor:
        """``f_abnormal``: APRIL-GAN's 5 abnormal states of the object in every template."""
        return self.embed_phrases(fill_states(ABNORMAL_STATES, object_name))
