"""Retention keeps the last N inspected images by SHA-256, with features, and refuses tampered records."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from normadd.config import LineConfig, RetentionSettings
from normadd.errors import NormaddError
from normadd.registry.retention import (
    RetainedFeatures,
    RetentionError,
    RetentionStore,
    features_from_bytes,
    features_to_bytes,
)
from normadd.registry.store import LineRecord, Registry

IDENTITY = "tiny-random|test"


@pytest.fixture
def location(registry_location: str) -> str:
    """Every test here runs on SQLite and on PostgreSQL (the index); the files go to ``tmp_path``."""
    return registry_location


def _store(tmp_path: Path, location: str, images: int = 3) -> RetentionStore:
    registry = Registry(location, retained_dir=tmp_path / "retained")
    retain = {"images": images, "features": "float16"}
    registry.create_line(LineRecord("line-1", "bottle", settings={"retain": retain}), "alice")
    return RetentionStore.for_line(registry, "line-1")


def _features(seed: int) -> RetainedFeatures:
    generator = torch.Generator().manual_seed(seed)
    tokens = [torch.randn(4, 8, generator=generator) for _ in range(2)]
    return RetainedFeatures(torch.rand(16, 16, generator=generator), tokens, (2, 2))


def _keep(store: RetentionStore, *names: str) -> list[str]:
    items = [(f"image {name}".encode(), f"{name}.png") for name in names]
    return store.retain(items, [_features(i) for i in range(len(names))], IDENTITY)


def test_the_oldest_images_are_evicted_past_the_limit(tmp_path: Path, location: str) -> None:
    store = _store(tmp_path, images=3, location=location)
    evicted = _keep(store, "a", "b")[0]
    _keep(store, "c", "d")
    assert [item.filename for item in store.recent()] == ["d.png", "c.png", "b.png"]
    assert not list(store.folder.glob(f"{evicted}*"))  # a's image and features files were deleted
    assert len(list(store.folder.iterdir())) == 6  # 3 images + 3 feature files


def test_a_repeated_image_is_stored_once_and_becomes_the_newest(tmp_path: Path, location: str) -> None:
    store = _store(tmp_path, images=3, location=location)
    first = _keep(store, "a", "b", "c")
    _keep(store, "a")
    assert [item.filename for item in store.recent()] == ["a.png", "c.png", "b.png"]
    assert store.usage().images == 3
    assert len(list(store.folder.glob(f"{first[0]}*"))) == 2  # one image file, one features file
    _keep(store, "d")
    assert [item.filename for item in store.recent()] == ["d.png", "a.png", "c.png"]  # b was the oldest


def test_disk_use_is_what_is_on_disk(tmp_path: Path, location: str) -> None:
    store = _store(tmp_path, location=location)
    _keep(store, "a", "b")
    usage = store.usage()
    on_disk = sum(path.stat().st_size for path in store.folder.iterdir())
    assert usage.images == 2 and usage.total_bytes == on_disk


def test_an_image_that_no_longer_matches_its_hash_is_refused(tmp_path: Path, location: str) -> None:
    store = _store(tmp_path, location=location)
    _keep(store, "a")
    item = store.recent()[0]
    assert store.read_image(item) == b"image a"
    store.image_path(item).write_bytes(b"image A")
    with pytest.raises(RetentionError, match="no longer matches its SHA-256"):
        store.read_image(item)


def test_features_that_no_longer_match_their_hash_are_refused(tmp_path: Path, location: str) -> None:
    store = _store(tmp_path, location=location)
    _keep(store, "a")
    item = store.recent()[0]
    assert store.read_features(item, IDENTITY) is not None
    path = store.features_path(item)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RetentionError, match="no longer match their SHA-256"):
        store.read_features(item, IDENTITY)


def test_features_of_another_model_are_not_read(tmp_path: Path, location: str) -> None:
    store = _store(tmp_path, location=location)
    _keep(store, "a")
    assert store.read_features(store.recent()[0], "ViT-L-14-336|other") is None


@pytest.mark.parametrize(("precision", "tolerance"), [("float32", 1e-7), ("float16", 1e-3), ("int8", 1e-2)])
def test_stored_features_come_back_at_their_precision(precision: str, tolerance: float) -> None:
    features = _features(0)
    back = features_from_bytes(features_to_bytes(features, precision, IDENTITY))
    assert back.grid_size == (2, 2)
    assert torch.equal(back.before, features.before)  # the map before is always float32
    for stored, original in zip(back.projected, features.projected, strict=True):
        unit = torch.nn.functional.normalize(original, dim=-1)
        assert (stored - unit).abs().max() <= tolerance


def test_a_line_without_retain_keeps_nothing(tmp_path: Path, location: str) -> None:
    registry = Registry(location, retained_dir=tmp_path / "retained")
    registry.create_line(LineRecord("line-1", "bottle"), "alice")
    store = RetentionStore.for_line(registry, "line-1")
    assert store.retain([(b"x", "x.png")], [None], IDENTITY) == []
    assert store.usage().images == 0 and not store.folder.exists()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"images": 0}, "whole number of images >= 1"),
        ({"images": "many"}, "whole number"),
        ({"images": 5, "features": "float8"}, "features must be one of"),
        ({"frames": 5}, "a mapping with 'images'"),
        (5, "a mapping with 'images'"),
    ],
)
def test_a_bad_retain_setting_is_one_clear_error(value: object, words: str) -> None:
    with pytest.raises(NormaddError, match=words):
        LineConfig(class_name="bottle", retain=value)  # type: ignore[arg-type]
    assert RetentionSettings.from_setting({"images": 5}) == RetentionSettings(5, "float16")


def test_registries_on_one_postgresql_database_with_one_retained_dir_see_each_others_parts(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    machines = {name: tmp_path / name for name in ("machine-a", "machine-b")}
    for folder in machines.values():
        folder.mkdir()
    monkeypatch.chdir(machines["machine-a"])
    first, second = Registry(postgres_url, retained_dir=shared), Registry(postgres_url, retained_dir=shared)
    alone = Registry(postgres_url)  # no retained_dir: <database>.retained in the working folder
    try:
        retain = {"images": 3, "features": "float32"}
        first.create_line(LineRecord("line-1", "bottle", settings={"retain": retain}), "alice")
        through_a = RetentionStore.for_line(first, "line-1")
        _keep(through_a, "a", "b")
        through_b = RetentionStore.for_line(second, "line-1")
        assert through_b.folder == through_a.folder
        items = through_b.recent()
        assert [through_b.read_image(item) for item in items] == [b"image b", b"image a"]
        features = through_b.read_features(items[0], IDENTITY)
        assert features is not None
        torch.testing.assert_close(features.before, _features(1).before)
        _keep(through_b, "c", "d")  # past the limit: b's retention evicts the file a wrote
        assert [item.filename for item in through_a.recent()] == ["d.png", "c.png", "b.png"]
        assert len(list(shared.rglob("*.png"))) == 3
        monkeypatch.chdir(machines["machine-b"])  # another machine's default folder lacks the files
        with pytest.raises(RetentionError, match="is missing from"):
            RetentionStore.for_line(alone, "line-1").read_image(items[0])
    finally:
        for registry in (first, second, alone):
            registry.close()
