"""On-disk cache of what one image costs to evaluate: the detector's "before" map and CLIP tokens.

One safetensors file per image under ``$NORMADD_CACHE_DIR/evaluation``, keyed by the image's
content (SHA-256 of the file), the input size, the detector's identity (backbone, weights,
projections) and the normality detector's. It holds:

* ``before_score``: the detector's own image score, fp32, exactly as computed;
* ``before_map``: the detector's map resized to the 256 × 256 suppression size, fp16 (it is only
  multiplied by keep factors there, so half precision is plenty);
* ``tokens``: the normality detector's projected patch tokens, L2-normalised, fp16, (L, N, D).
  Any group text's suppression map is computed from them, so a new group needs no image pass.
  fp16 is the least that keeps those maps within 1e-3 of fp32 tokens: bf16 and the one-byte
  formats do not (``benchmarks/bench_feature_cache.py``).

The runner always reads these records, fresh or cached, so a rerun gives the same numbers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from normadd.cache import atomic_write_bytes, cache_dir, cache_key

CACHE_KIND = "evaluation"
CACHE_VERSION = 1

# Formats the tokens can be stored in (``benchmarks/bench_feature_cache.py`` measures each); the
# 8-bit ones are scaled per token to their range, harmless because the maps re-normalise tokens.
STORED_FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "int8")
TOKEN_FORMAT = "float16"
_RANGE = {"float8_e4m3fn": 448.0, "int8": 127.0}


def store_tokens(tokens: Tensor, stored: str) -> Tensor:
    """L2-normalised fp32 tokens (..., D) in a stored format: a cast, or for 8 bits a per-token scale.

    Raises:
        ValueError: A format not in :data:`STORED_FORMATS` (nor ``float32``).
    """
    if stored not in (*STORED_FORMATS, "float32"):
        raise ValueError(f"unknown token format {stored!r}: use one of {', '.join(STORED_FORMATS)}")
    if stored in _RANGE:
        scale = _RANGE[stored] / tokens.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
        tokens = tokens * scale
        if stored == "int8":
            tokens = tokens.round()
    return tokens.to(getattr(torch, stored))


@dataclass
class ImageRecord:
    """The cached evaluation inputs of one image.

    Attributes:
        before_score: The detector's image score (max of its native map).
        before_map: (256, 256) fp16 map at the suppression size.
        tokens: (L, N, D) fp16 L2-normalised projected patch tokens of the normality detector.
        grid_size: (rows, cols) of the patch grid.
    """

    before_score: float
    before_map: Tensor
    tokens: Tensor
    grid_size: tuple[int, int]

    @classmethod
    def from_outputs(
        cls,
        before_score: Tensor,
        before_map: Tensor,
        projected: list[Tensor],
        grid_size: tuple[int, int],
        stored: str = TOKEN_FORMAT,
    ) -> ImageRecord:
        """Build from one image's detector score, map at 256 and per-layer projected tokens (N, D).

        Args:
            before_score: The detector's image score.
            before_map: Its map at the suppression size.
            projected: Per tapped layer, the normality detector's projected tokens (N, D).
            grid_size: (rows, cols) of the patch grid.
            stored: Token format (:data:`TOKEN_FORMAT` unless measuring another).
        """
        tokens = store_tokens(torch.stack([F.normalize(t.float(), dim=-1) for t in projected]), stored).cpu()
        return cls(float(before_score), before_map.half().cpu(), tokens, grid_size)

    def to_bytes(self) -> bytes:
        """Serialise as safetensors."""
        return save(
            {
                "before_score": torch.tensor([self.before_score], dtype=torch.float32),
                "before_map": self.before_map.contiguous(),
                "tokens": self.tokens.contiguous(),
                "grid_size": torch.tensor(self.grid_size, dtype=torch.int64),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageRecord:
        """Read what :meth:`to_bytes` wrote."""
        tensors = load(data)
        rows, cols = (int(v) for v in tensors["grid_size"])
        return cls(float(tensors["before_score"][0]), tensors["before_map"], tensors["tokens"], (rows, cols))


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content (so a renamed image is still a cache hit and an edited one is not)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FeatureCache:
    """Image records on disk, for one detector and normality detector set-up.

    Args:
        identity: Everything the records depend on besides the image (detector, backbone,
            weights, projections, input size), as JSON-able parts.
        enabled: When False nothing is read or written (``--no-cache``).
    """

    def __init__(self, identity: list[object], enabled: bool = True) -> None:
        self.identity = identity
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self.bytes_written = 0

    def _path(self, image_digest: str) -> Path:
        return cache_dir(CACHE_KIND) / f"{cache_key(CACHE_VERSION, self.identity, image_digest)}.safetensors"

    def get(self, image_digest: str) -> ImageRecord | None:
        """The record of an image, or None (a damaged file counts as missing)."""
        if not self.enabled:
            return None
        path = self._path(image_digest)
        if path.is_file():
            try:
                record = ImageRecord.from_bytes(path.read_bytes())
            except (SafetensorError, KeyError, ValueError, OSError):
                record = None
            if record is not None:
                self.hits += 1
                return record
        self.misses += 1
        return None

    def put(self, image_digest: str, record: ImageRecord) -> None:
        """Store an image's record (atomically)."""
        if not self.enabled:
            return
        data = record.to_bytes()
        atomic_write_bytes(self._path(image_digest), data)
        self.bytes_written += len(data)

    @staticmethod
    def record_size(record: ImageRecord) -> int:
        """Bytes one record takes on disk."""
        return len(record.to_bytes())
