"""Per-layer projections: normadd and APRIL-GAN checkpoints, checked at load; CLIP-head fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from normadd.backbone import ClipEncoder
from normadd.detectors import AprilGanDetector, LayerProjections, load_projections, save_projections
from normadd.detectors.projections import FORMAT, FORMAT_VERSION
from normadd.errors import NormaddError, WeightsMismatchError, WeightsNotFoundError

pytestmark = pytest.mark.usefixtures("one_thread")


def random_tokens(encoder: ClipEncoder, seed: int = 0, batch: int = 2) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 100, encoder.width, generator=generator) for _ in encoder.spec.layers]


def seeded_projections(encoder: ClipEncoder, seed: int = 0) -> LayerProjections:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LayerProjections(encoder.width, encoder.embed_dim, len(encoder.spec.layers))


def official_checkpoint(layers: int, out_dim: int, in_dim: int, seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """What APRIL-GAN's train.py saves: ``{"trainable_linearlayer": LinearLayer.state_dict()}``."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for i in range(layers):
        state[f"fc.{i}.weight"] = torch.randn(out_dim, in_dim, generator=generator) * 0.1
        state[f"fc.{i}.bias"] = torch.randn(out_dim, generator=generator) * 0.1
    return {"trainable_linearlayer": state}


@pytest.fixture(scope="module")
def two_layer_encoder() -> ClipEncoder:
    return ClipEncoder.from_name("tiny-random", layers=(2, 4))


# --- normadd checkpoints ------------------------------------------------------


def test_save_then_load_projects_identically(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    projections = seeded_projections(tiny_encoder, seed=3)
    path = tmp_path / "deep" / "folder" / "projections.pt"  # parents are created
    save_projections(projections, tiny_encoder, path)
    loaded = load_projections(path, tiny_encoder)
    tokens = random_tokens(tiny_encoder)
    with torch.no_grad():
        expected = projections(tokens)
    got = loaded(tokens)
    assert len(got) == 4
    for a, b in zip(got, expected, strict=True):
        assert a.shape == (2, 100, tiny_encoder.embed_dim)
        assert torch.equal(a, b)
    assert loaded.kind == "linear"
    assert "normadd checkpoint" in loaded.description
    assert not any(p.requires_grad for p in loaded.parameters())


def test_saving_leaves_no_temporary_file(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    save_projections(seeded_projections(tiny_encoder), tiny_encoder, tmp_path / "p.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["p.pt"]


def test_a_normadd_checkpoint_records_backbone_layers_and_dimensions(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    path = tmp_path / "p.pt"
    save_projections(seeded_projections(tiny_encoder), tiny_encoder, path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and payload["version"] == FORMAT_VERSION
    assert payload["backbone"] == "tiny-random"
    assert payload["layers"] == [1, 2, 3, 4]
    assert (payload["in_dim"], payload["out_dim"]) == (64, 32)


def test_the_clip_head_fallback_cannot_be_saved(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="linear"):
        save_projections(LayerProjections.clip_head(tiny_encoder), tiny_encoder, tmp_path / "p.pt")


def test_another_backbones_checkpoint_is_refused(
    tiny_encoder: ClipEncoder, two_layer_encoder: ClipEncoder, tmp_path: Path
) -> None:
    path = tmp_path / "two-layers.pt"
    save_projections(seeded_projections(two_layer_encoder), two_layer_encoder, path)
    with pytest.raises(WeightsMismatchError, match=r"layers \[2, 4\]"):
        load_projections(path, tiny_encoder)


def test_a_checkpoint_made_for_vit_l_is_refused_by_name(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    path = tmp_path / "vit-l.pt"
    save_projections(seeded_projections(tiny_encoder), tiny_encoder, path)
    payload = torch.load(path, weights_only=True)
    payload["backbone"] = "ViT-L-14-336"
    torch.save(payload, path)
    with pytest.raises(WeightsMismatchError, match="ViT-L-14-336"):
        load_projections(path, tiny_encoder)


def test_a_checkpoint_of_another_format_version_is_refused(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    save_projections(seeded_projections(tiny_encoder), tiny_encoder, path)
    payload = torch.load(path, weights_only=True)
    payload["version"] = FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(WeightsMismatchError, match="version"):
        load_projections(path, tiny_encoder)


# --- official APRIL-GAN checkpoints -------------------------------------------


def test_an_official_aprilgan_checkpoint_projects_like_nn_linear(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    checkpoint = official_checkpoint(4, tiny_encoder.embed_dim, tiny_encoder.width)
    path = tmp_path / "zero_shot.pth"
    torch.save(checkpoint, path)
    loaded = load_projections(path, tiny_encoder)
    assert "APRIL-GAN checkpoint" in loaded.description
    tokens = random_tokens(tiny_encoder, seed=1)
    state = checkpoint["trainable_linearlayer"]
    for i, (got, t) in enumerate(zip(loaded(tokens), tokens, strict=True)):
        expected = F.linear(t, state[f"fc.{i}.weight"], state[f"fc.{i}.bias"])
        assert torch.allclose(got, expected, atol=1e-6)


def test_official_layers_are_read_in_order(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    checkpoint = official_checkpoint(4, tiny_encoder.embed_dim, tiny_encoder.width)
    path = tmp_path / "zero_shot.pth"
    torch.save(checkpoint, path)
    loaded = load_projections(path, tiny_encoder)
    for i in range(4):
        assert torch.equal(loaded.fc[i].weight, checkpoint["trainable_linearlayer"][f"fc.{i}.weight"])


def test_an_official_checkpoint_with_the_wrong_layer_count_is_refused(
    tiny_encoder: ClipEncoder, tmp_path: Path
) -> None:
    path = tmp_path / "three.pth"
    torch.save(official_checkpoint(3, tiny_encoder.embed_dim, tiny_encoder.width), path)
    with pytest.raises(WeightsMismatchError, match="3 layers"):
        load_projections(path, tiny_encoder)


def test_an_official_checkpoint_of_the_wrong_width_is_refused(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    path = tmp_path / "vit-l.pth"
    torch.save(official_checkpoint(4, 768, 1024), path)  # the real ViT-L-14-336 shapes
    with pytest.raises(WeightsMismatchError, match="input width 1024"):
        load_projections(path, tiny_encoder)


def test_an_official_checkpoint_with_transposed_weights_is_refused(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    path = tmp_path / "transposed.pth"
    torch.save(official_checkpoint(4, tiny_encoder.width, tiny_encoder.embed_dim), path)
    with pytest.raises(WeightsMismatchError):
        load_projections(path, tiny_encoder)


# --- unusable files -----------------------------------------------------------


def test_a_missing_file_raises_weights_not_found(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_projections(tmp_path / "nowhere.pt", tiny_encoder)


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint" * 4])
def test_a_garbage_file_raises_weights_mismatch(tiny_encoder: ClipEncoder, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(WeightsMismatchError, match="cannot be read"):
        load_projections(path, tiny_encoder)


def test_a_file_without_a_state_dict_raises_weights_mismatch(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(WeightsMismatchError, match="no state dict"):
        load_projections(path, tiny_encoder)


def test_a_dict_of_another_kind_raises_weights_mismatch(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    with pytest.raises(WeightsMismatchError, match="neither a normadd nor an APRIL-GAN"):
        load_projections(path, tiny_encoder)


def test_projections_for_another_number_of_tapped_layers_refuse_to_run(
    tiny_encoder: ClipEncoder,
) -> None:
    projections = seeded_projections(tiny_encoder)
    with pytest.raises(WeightsMismatchError, match="4 layers but 2"):
        projections(random_tokens(tiny_encoder)[:2])


def test_every_projection_error_is_a_normadd_error() -> None:
    assert issubclass(WeightsMismatchError, NormaddError)
    assert issubclass(WeightsNotFoundError, NormaddError)


# --- training-free fallback ---------------------------------------------------


def test_the_clip_head_fallback_is_ln_post_then_proj(tiny_encoder: ClipEncoder) -> None:
    projections = LayerProjections.clip_head(tiny_encoder)
    visual = tiny_encoder.model.visual
    tokens = random_tokens(tiny_encoder, seed=2)
    with torch.no_grad():
        got = projections(tokens)
        for t, g in zip(tokens, got, strict=True):
            assert g.shape == (2, 100, tiny_encoder.embed_dim)
            assert torch.allclose(g, visual.ln_post(t) @ visual.proj, atol=1e-6)
    assert projections.kind == "clip-head"
    assert "training-free" in projections.description


def test_the_clip_head_fallback_has_no_weights_of_its_own(tiny_encoder: ClipEncoder) -> None:
    assert len(LayerProjections.clip_head(tiny_encoder).state_dict()) == 0


def test_the_detector_without_projections_uses_the_training_free_fallback(
    tiny_encoder: ClipEncoder,
) -> None:
    from normadd.prompts import TextEmbedder

    detector = AprilGanDetector(tiny_encoder, "bottle", text_embedder=TextEmbedder(tiny_encoder, ("a {}.",)))
    assert detector.projections.kind == "clip-head"
    assert "training-free" in detector.description


def test_the_detector_loads_projections_from_a_file(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    path = tmp_path / "zero_shot.pth"
    torch.save(official_checkpoint(4, tiny_encoder.embed_dim, tiny_encoder.width), path)
    detector = AprilGanDetector.from_files(tiny_encoder, "bottle", projections=path)
    assert detector.projections.kind == "linear"
    assert "APRIL-GAN checkpoint" in detector.description


# --- bare state dicts and named checkpoints (issue 16) -----------------------


def test_a_bare_fc_state_dict_loads_like_the_wrapped_one(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    checkpoint = official_checkpoint(4, tiny_encoder.embed_dim, tiny_encoder.width, seed=5)
    wrapped, bare = tmp_path / "wrapped.pth", tmp_path / "bare.pth"
    torch.save(checkpoint, wrapped)
    torch.save(checkpoint["trainable_linearlayer"], bare)
    tokens = random_tokens(tiny_encoder)
    from_bare = load_projections(bare, tiny_encoder)(tokens)
    from_wrapped = load_projections(wrapped, tiny_encoder)(tokens)
    for a, b in zip(from_bare, from_wrapped, strict=True):
        assert torch.equal(a, b)


def test_a_bare_state_dict_of_the_wrong_shape_is_refused(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    path = tmp_path / "bare.pth"
    torch.save(official_checkpoint(4, tiny_encoder.embed_dim, 7)["trainable_linearlayer"], path)
    with pytest.raises(WeightsMismatchError, match="input width 7"):
        load_projections(path, tiny_encoder)


def test_a_named_checkpoint_resolves_from_the_cache(
    tiny_encoder: ClipEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normadd.cache import cache_dir
    from normadd.detectors.projections import resolve_projections

    placed = cache_dir("projections") / "visa_pretrained.pth"
    torch.save(official_checkpoint(4, tiny_encoder.embed_dim, tiny_encoder.width), placed)
    resolved = resolve_projections("aprilgan-visa", "tiny-random")
    assert resolved is not None and resolved.path == placed and resolved.origin == "cache"
    assert load_projections(resolved.path, tiny_encoder).kind == "linear"
    # ViT-L-14-336 uses it by default once it is there; other backbones do not.
    default = resolve_projections(None, "ViT-L-14-336")
    assert default is not None and default.path == placed
    assert resolve_projections(None, "tiny-random") is None


def test_a_named_checkpoint_resolves_from_the_environment_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normadd.detectors.projections import resolve_projections

    folder = tmp_path / "projections"
    folder.mkdir()
    (folder / "mvtec_pretrained.pth").write_bytes(b"x")
    monkeypatch.setenv("NORMADD_PROJECTIONS", str(folder))
    resolved = resolve_projections("aprilgan-mvtec", "ViT-L-14-336")
    assert resolved is not None and resolved.path == folder / "mvtec_pretrained.pth"
    assert resolved.origin == "environment"


def test_a_projections_file_in_the_environment_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from normadd.detectors.projections import resolve_projections

    path = tmp_path / "mine.pth"
    path.write_bytes(b"x")
    monkeypatch.setenv("NORMADD_PROJECTIONS", str(path))
    resolved = resolve_projections(None, "tiny-random")
    assert resolved is not None and resolved.path == path and resolved.origin == "environment"


def test_a_named_checkpoint_that_is_nowhere_is_one_line_naming_the_places() -> None:
    from normadd.cache import cache_dir
    from normadd.detectors.projections import resolve_projections

    with pytest.raises(WeightsNotFoundError) as caught:
        resolve_projections("aprilgan-visa", "ViT-L-14-336")
    message = str(caught.value)
    assert "visa_pretrained.pth" in message and str(cache_dir("projections")) in message
    assert "--projections PATH" in message and "not downloaded: downloads are off" in message
    assert "\n" not in message


def test_without_a_cached_checkpoint_vit_l_keeps_the_training_free_fallback() -> None:
    from normadd.detectors.projections import resolve_projections

    assert resolve_projections(None, "ViT-L-14-336") is None


def test_the_clip_image_score_is_aprilgans_softmax_of_the_pooled_embedding(tiny_encoder: ClipEncoder) -> None:
    size = tiny_encoder.image_size
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    by_max = AprilGanDetector(tiny_encoder, "bottle").detect(images)
    by_clip_detector = AprilGanDetector(tiny_encoder, "bottle", image_score="clip")
    by_clip = by_clip_detector.detect(images)
    assert torch.equal(by_clip.maps, by_max.maps)  # only the image score changes
    features = tiny_encoder.encode_images(tiny_encoder.preprocess(images))
    image = F.normalize(features.image_embedding, dim=-1)
    texts = F.normalize(torch.stack([by_clip_detector.normal_embedding, by_clip_detector.abnormal_embedding]), dim=-1)
    expected = (100.0 * image @ texts.T).softmax(-1)[:, 1]
    assert torch.allclose(by_clip.scores, expected, atol=1e-6)
    assert ((by_clip.scores >= 0) & (by_clip.scores <= 1)).all()


def test_an_unknown_image_score_is_one_line(tiny_encoder: ClipEncoder) -> None:
    with pytest.raises(NormaddError, match="image_score 'mean' is unknown: use max or clip"):
        AprilGanDetector(tiny_encoder, "bottle", image_score="mean")


def test_a_named_checkpoint_downloads_into_the_cache_from_a_mirror_when_downloads_are_allowed(
    tiny_encoder: ClipEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools
    import http.server
    import threading

    from normadd.cache import cache_dir
    from normadd.detectors.projections import resolve_projections

    served = tmp_path / "mirror"
    served.mkdir()
    torch.save(official_checkpoint(4, tiny_encoder.embed_dim, tiny_encoder.width), served / "visa_pretrained.pth")
    (served / "mvtec_pretrained.pth").write_bytes(b"<html>not a checkpoint</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for flag in ("HF_HUB_OFFLINE", "NORMADD_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(flag, raising=False)
        monkeypatch.setenv("NORMADD_PROJECTIONS_URL", f"http://127.0.0.1:{server.server_port}/")
        resolved = resolve_projections("aprilgan-visa", "tiny-random")
        assert resolved is not None and resolved.origin == "download"
        assert resolved.path == cache_dir("projections") / "visa_pretrained.pth"
        assert resolved.path.read_bytes() == (served / "visa_pretrained.pth").read_bytes()
        assert load_projections(resolved.path, tiny_encoder).kind == "linear"
        # the second time it is in the cache: no request needed
        server.shutdown()
        assert resolve_projections("aprilgan-visa", "tiny-random").origin == "cache"  # type: ignore[union-attr]
    finally:
        server.server_close()


def test_a_mirror_answering_something_else_than_a_checkpoint_is_one_line_and_nothing_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools
    import http.server
    import threading

    from normadd.cache import cache_dir
    from normadd.detectors.projections import resolve_projections

    served = tmp_path / "mirror"
    served.mkdir()
    (served / "mvtec_pretrained.pth").write_bytes(b"<html>not a checkpoint</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for flag in ("HF_HUB_OFFLINE", "NORMADD_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(flag, raising=False)
        monkeypatch.setenv("NORMADD_PROJECTIONS_URL", f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(WeightsNotFoundError) as caught:
            resolve_projections("aprilgan-mvtec", "ViT-L-14-336")
        assert "did not give a torch checkpoint" in str(caught.value) and "\n" not in str(caught.value)
        assert not (cache_dir("projections") / "mvtec_pretrained.pth").exists()
        with pytest.raises(WeightsNotFoundError, match=r"not downloaded: http://127\.0\.0\.1"):
            resolve_projections("aprilgan-visa", "ViT-L-14-336")  # 404 on the mirror
    finally:
        server.shutdown()
        server.server_close()
