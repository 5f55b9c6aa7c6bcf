"""The feature cache: records survive the disk round trip and keys separate set-ups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from normadd.evaluation.feature_cache import FeatureCache, ImageRecord, file_digest


def _record() -> ImageRecord:
    torch.manual_seed(0)
    projected = [torch.randn(49, 32) for _ in range(4)]
    return ImageRecord.from_outputs(torch.tensor(2.718281828), torch.rand(256, 256), projected, (7, 7))


def test_a_record_comes_back_with_the_exact_score_and_half_precision_maps(tmp_path: Path) -> None:
    cache = FeatureCache(["detector", "backbone"])
    record = _record()
    cache.put("digest", record)
    loaded = cache.get("digest")
    assert loaded is not None and cache.hits == 1
    assert loaded.before_score == record.before_score == pytest.approx(2.718281828, rel=1e-7)
    assert loaded.before_map.dtype == torch.float16 and torch.equal(loaded.before_map, record.before_map)
    assert loaded.tokens.shape == (4, 49, 32) and torch.equal(loaded.tokens, record.tokens)
    assert loaded.grid_size == (7, 7)
    # tokens are stored L2-normalised, so fp16 keeps every cosine to ~1e-3
    assert loaded.tokens.float().norm(dim=-1).sub(1).abs().max() < 1e-3


def test_another_detector_or_backbone_misses_the_cache() -> None:
    FeatureCache(["detector", "backbone"]).put("digest", _record())
    other = FeatureCache(["detector", "other backbone"])
    assert other.get("digest") is None and other.misses == 1


def test_a_disabled_cache_neither_reads_nor_writes() -> None:
    cache = FeatureCache(["x"], enabled=False)
    cache.put("digest", _record())
    assert cache.get("digest") is None and cache.bytes_written == 0
    assert FeatureCache(["x"]).get("digest") is None


def test_a_damaged_cache_file_counts_as_a_miss() -> None:
    cache = FeatureCache(["y"])
    cache.put("digest", _record())
    cache._path("digest").write_bytes(b"not safetensors")
    assert cache.get("digest") is None


def test_images_are_keyed_by_content_not_by_name(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"same bytes")
    (tmp_path / "b.png").write_bytes(b"same bytes")
    (tmp_path / "c.png").write_bytes(b"other bytes")
    assert file_digest(tmp_path / "a.png") == file_digest(tmp_path / "b.png") != file_digest(tmp_path / "c.png")
