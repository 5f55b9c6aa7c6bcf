"""The feature cache: records survive the disk round trip and keys separate set-ups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from normadd.backbone.clip_encoder import ClipEncoder
from normadd.evaluation.feature_cache import TOKEN_FORMAT, FeatureCache, ImageRecord, file_digest, store_tokens
from normadd.images import load_batch
from normadd.normality.text_normality import AddedNormality, NormalityDetector
from normadd.prompts.text_embedding import TextEmbedder


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


BottleTokens = tuple[NormalityDetector, list[AddedNormality], list[torch.Tensor], tuple[int, int]]


@pytest.fixture(scope="module")
def bottle_tokens(bottle_dir: Path) -> BottleTokens:
    """The tiny random normality detector, 3 normalities, and its projected tokens of 3 bottle test images."""
    encoder = ClipEncoder.from_name("tiny-random")
    detector = NormalityDetector(encoder, "bottle", text_embedder=TextEmbedder(encoder, disk_cache=False))
    normalities = [detector.make_normality(text) for text in ("broken", "contamination", "scratch")]
    paths = [bottle_dir / "test" / name / "000.png" for name in ("broken_large", "contamination", "good")]
    _, images, _ = load_batch(paths, encoder.image_size)
    assert images is not None
    features = encoder.encode_images(encoder.preprocess(images))
    return detector, normalities, detector.project(features), features.grid_size


def _suppression_from_records(
    detector: NormalityDetector, normalities: list[AddedNormality], records: list[ImageRecord]
) -> torch.Tensor:
    tokens = torch.stack([r.tokens for r in records]).float()
    return detector.suppression_from_projected(list(tokens.unbind(dim=1)), records[0].grid_size, normalities)


def _records(projected: list[torch.Tensor], grid: tuple[int, int], stored: str) -> list[ImageRecord]:
    records = [
        ImageRecord.from_outputs(torch.tensor(1.0), torch.rand(256, 256), [p[i] for p in projected], grid, stored)
        for i in range(projected[0].shape[0])
    ]
    return [ImageRecord.from_bytes(r.to_bytes()) for r in records]  # through the disk format


def test_cached_tokens_keep_suppression_maps_within_1e_3_of_fp32(bottle_tokens: BottleTokens) -> None:
    detector, normalities, projected, grid = bottle_tokens
    exact = detector.suppression_from_projected([p.float() for p in projected], grid, normalities)
    cached = _suppression_from_records(detector, normalities, _records(projected, grid, TOKEN_FORMAT))
    assert cached.shape == exact.shape == (3, 3, 256, 256)
    assert (cached - exact).abs().max() <= 1e-3


@pytest.mark.parametrize("stored", ["bfloat16", "float8_e4m3fn", "int8"])
def test_smaller_token_formats_move_the_maps_past_1e_3(bottle_tokens: BottleTokens, stored: str) -> None:
    """Why the cache keeps fp16: no 1-byte format, nor bf16, keeps the maps within the bound."""
    detector, normalities, projected, grid = bottle_tokens
    exact = detector.suppression_from_projected([p.float() for p in projected], grid, normalities)
    records = _records(projected, grid, stored)
    assert records[0].tokens.dtype == getattr(torch, stored)
    assert (_suppression_from_records(detector, normalities, records) - exact).abs().max() > 1e-3


def test_an_unknown_token_format_is_refused() -> None:
    with pytest.raises(ValueError, match="float16"):
        store_tokens(torch.ones(2, 4), "float4")
