"""Retention: the last N inspected images of a line, content-addressed, with what a new text needs.

Opt-in per line with ``retain: {images: N}`` in the line config. Each image is stored once under
its SHA-256 in a folder beside the registry (``normadd.db.retained/<line>/``); inspecting it again
only makes it the newest. Beside it go the image's *retained features*: the anomaly map before any
normality (256 x 256, float32) and the normality detector's projected patch tokens per tapped layer
(L2-normalised, at the precision ``features`` names), which is all a new text needs to get its
suppression map, so previewing a text on retained parts needs no image pass. The oldest images
are evicted past N. Every read re-checks the SHA-256 of the image and of the features file; a
record that no longer matches is refused, never used.

The index (which images, in which order, their hashes and sizes) is a table of the registry.
Torch is imported only to write or read features, so ``line show`` stays quick.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normadd.cache import atomic_write_bytes
from normadd.config import RetentionSettings
from normadd.errors import NormaddError
from normadd.registry.store import Registry, _now

NO_LIMIT = 2**62  # "LIMIT ?" with no limit: SQLite's -1 is an error on PostgreSQL

if TYPE_CHECKING:
    from torch import Tensor


class RetentionError(NormaddError):
    """A retained record that cannot be used (missing, or no longer matching its hash)."""


@dataclass
class RetainedFeatures:
    """What a retained image gives a new text without an image pass.

    Attributes:
        before: (H, W) anomaly map before any normality, at the suppression size.
        projected: Per tapped layer, (N, D) projected patch tokens, L2-normalised (float16 or float32).
        grid_size: (rows, cols) of the patch grid.
    """

    before: Tensor
    projected: list[Tensor]
    grid_size: tuple[int, int]


@dataclass
class RetainedImage:
    """One entry of a line's retention index."""

    sha256: str
    filename: str
    suffix: str
    image_bytes: int
    features_sha256: str | None
    features_bytes: int
    features_identity: str | None
    seen_at: str
    seen: int


@dataclass
class RetentionUsage:
    """How many images a line keeps and their disk use."""

    images: int
    image_bytes: int
    features_bytes: int

    @property
    def total_bytes(self) -> int:
        """Images and features together."""
        return self.image_bytes + self.features_bytes


def features_to_bytes(features: RetainedFeatures, precision: str, identity: str) -> bytes:
    """Serialise one image's features (safetensors) at ``precision``."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from safetensors.torch import save as save_safetensors

    tensors: dict[str, Tensor] = {"before": features.before.detach().float().cpu().contiguous()}
    for index, tokens in enumerate(features.projected):
        unit = F.normalize(tokens.detach().float().cpu(), dim=-1)  # the segmenter normalises them anyway
        if precision == "int8":
            scale = unit.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127.0
            tensors[f"layer.{index}"] = torch.round(unit / scale).to(torch.int8).contiguous()
            tensors[f"layer.{index}.scale"] = scale.contiguous()
        else:
            tensors[f"layer.{index}"] = unit.to(getattr(torch, precision)).contiguous()
    rows, cols = features.grid_size
    metadata = {
        "grid": f"{rows}x{cols}",
        "precision": precision,
        "identity": identity,
        "layers": str(len(features.projected)),
    }
    return save_safetensors(tensors, metadata=metadata)


def features_from_bytes(data: bytes) -> RetainedFeatures:
    """Read what :func:`features_to_bytes` wrote: tokens as stored (int8 scaled back to float32).

    Float16 tokens stay float16 here: the segmenter converts each batch as it normalises them,
    which halves the memory a preview of many parts holds.
    """
    from safetensors.torch import load as load_safetensors

    tensors = load_safetensors(data)
    layers = sorted(int(key.split(".")[1]) for key in tensors if key.startswith("layer.") and key.count(".") == 1)
    projected = []
    for index in layers:
        tokens = tensors[f"layer.{index}"]
        scale = tensors.get(f"layer.{index}.scale")
        projected.append(tokens.float() * scale if scale is not None else tokens)
    rows, cols = (int(x) for x in _metadata(data).get("grid", "0x0").split("x"))
    return RetainedFeatures(tensors["before"].float(), projected, (rows, cols))


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob: its header is 8 bytes of length, then JSON."""
    length = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8 : 8 + length]).get("__metadata__") or {})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safe_suffix(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""


class RetentionStore:
    """The retained images of one line: files beside the registry, index in the registry.

    Args:
        registry: The registry (its path decides the folder; its ``retained_images`` table is the index).
        line: The line's name.
        settings: The line's ``retain`` setting; None for a line that keeps nothing (reads still work).
    """

    def __init__(self, registry: Registry, line: str, settings: RetentionSettings | None) -> None:
        self.registry = registry
        self.line = line
        self.settings = settings
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", line)[:40]
        self.folder = registry.retained_root / f"{slug}-{_sha256(line.encode())[:8]}"

    @classmethod
    def for_line(cls, registry: Registry, line: str) -> RetentionStore:
        """The store of a line, with the ``retain`` setting it was created with."""
        record = registry.line(line)
        return cls(
            registry, line, RetentionSettings.from_setting(record.settings.get("retain"), f"line '{line}' retain")
        )

    def image_path(self, item: RetainedImage) -> Path:
        """Where an image's bytes are kept."""
        return self.folder / f"{item.sha256}{item.suffix}"

    def features_path(self, item: RetainedImage) -> Path:
        """Where an image's features are kept."""
        return self.folder / f"{item.sha256}.features.safetensors"

    def retain(
        self, images: list[tuple[bytes, str]], features: list[RetainedFeatures | None], identity: str
    ) -> list[str]:
        """Keep inspected images (and their features), newest last; evict the oldest past the limit.

        Args:
            images: (bytes, file name) of each inspected image, in inspection order.
            features: Each image's features, or None where there are none to keep.
            identity: Names the model the features came from; features of another model are not read.

        Returns:
            The SHA-256 of each image.
        """
        if self.settings is None:
            return []
        self.folder.mkdir(parents=True, exist_ok=True)
        precision = self.settings.features
        hashes = []
        rows: list[tuple[Any, ...]] = []
        for (data, filename), item_features in zip(images, features, strict=True):
            sha = _sha256(data)
            hashes.append(sha)
            suffix = _safe_suffix(filename)
            image_file = self.folder / f"{sha}{suffix}"
            if not image_file.exists():
                atomic_write_bytes(image_file, data)
            features_sha, features_bytes = None, 0
            if item_features is not None:
                blob = features_to_bytes(item_features, precision, identity)
                atomic_write_bytes(self.folder / f"{sha}.features.safetensors", blob)
                features_sha, features_bytes = _sha256(blob), len(blob)
            rows.append(
                (sha, filename, suffix, len(data), features_sha, features_bytes, identity if item_features else None)
            )
        evicted: list[RetainedImage] = []
        with self.registry.transaction() as db:
            seen = int(
                db.execute(
                    "SELECT COALESCE(MAX(seen), 0) FROM retained_images WHERE line = ?", (self.line,)
                ).fetchone()[0]
            )
            for sha, filename, suffix, size, features_sha, features_bytes, features_identity in rows:
                seen += 1
                db.execute(
                    "INSERT INTO retained_images (line, sha256, filename, suffix, image_bytes, features_sha256, "
                    "features_bytes, features_identity, seen_at, seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (line, sha256) DO UPDATE SET filename = excluded.filename, "
                    "seen_at = excluded.seen_at, seen = excluded.seen, "
                    "features_sha256 = COALESCE(excluded.features_sha256, retained_images.features_sha256), "
                    "features_bytes = CASE WHEN excluded.features_sha256 IS NULL THEN retained_images.features_bytes "
                    "ELSE excluded.features_bytes END, "
                    "features_identity = COALESCE(excluded.features_identity, retained_images.features_identity)",
                    (
                        self.line,
                        sha,
                        filename,
                        suffix,
                        size,
                        features_sha,
                        features_bytes,
                        features_identity,
                        _now(),
                        seen,
                    ),
                )
            extra = db.execute(
                "SELECT * FROM retained_images WHERE line = ? ORDER BY seen DESC LIMIT ? OFFSET ?",
                (self.line, NO_LIMIT, self.settings.images),
            ).fetchall()
            evicted = [_retained(row) for row in extra]
            for item in evicted:
                db.execute("DELETE FROM retained_images WHERE line = ? AND sha256 = ?", (self.line, item.sha256))
        for item in evicted:  # after the commit: a crash in between leaves files no index row names, never the reverse
            self.image_path(item).unlink(missing_ok=True)
            self.features_path(item).unlink(missing_ok=True)
        return hashes

    def recent(self, count: int | None = None) -> list[RetainedImage]:
        """The retained images, newest first (at most ``count``)."""
        rows = self.registry.query(
            "SELECT * FROM retained_images WHERE line = ? ORDER BY seen DESC LIMIT ?",
            (self.line, NO_LIMIT if count is None else int(count)),
        )
        return [_retained(row) for row in rows]

    def usage(self) -> RetentionUsage:
        """Retained count and bytes (images and features) of the line."""
        row = self.registry.query(
            "SELECT COUNT(*), COALESCE(SUM(image_bytes), 0), COALESCE(SUM(features_bytes), 0) "
            "FROM retained_images WHERE line = ?",
            (self.line,),
        )[0]
        return RetentionUsage(int(row[0]), int(row[1]), int(row[2]))

    def read_image(self, item: RetainedImage) -> bytes:
        """The image's bytes, after checking they still hash to its SHA-256.

        Raises:
            RetentionError: The file is gone or changed.
        """
        path = self.image_path(item)
        try:
            data = path.read_bytes()
        except OSError:
            raise RetentionError(
                f"retained image {item.sha256[:12]} ({item.filename}) is missing from {self.folder}"
            ) from None
        if _sha256(data) != item.sha256:
            raise RetentionError(
                f"retained image {item.sha256[:12]} ({item.filename}) no longer matches its SHA-256: refused "
                f"(the file {path} was changed)"
            )
        return data

    def read_features(self, item: RetainedImage, identity: str) -> RetainedFeatures | None:
        """The image's features, after checking their hash; None when there are none for ``identity``.

        Raises:
            RetentionError: The features file is gone or changed.
        """
        if item.features_sha256 is None or item.features_identity != identity:
            return None
        path = self.features_path(item)
        try:
            data = path.read_bytes()
        except OSError:
            raise RetentionError(
                f"features of retained image {item.sha256[:12]} ({item.filename}) are missing"
            ) from None
        if _sha256(data) != item.features_sha256:
            raise RetentionError(
                f"features of retained image {item.sha256[:12]} ({item.filename}) no longer match their SHA-256: "
                f"refused (the file {path} was changed)"
            )
        return features_from_bytes(data)


def _retained(row: Any) -> RetainedImage:
    return RetainedImage(**{key: row[key] for key in RetainedImage.__dataclass_fields__})
