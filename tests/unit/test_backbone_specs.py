"""Any open_clip model as --backbone: MODEL:TAG, a model config JSON file, --layers and --image-size (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from normadd.backbone import ClipEncoder
from normadd.backbone.specs import _CONFIG_DIR, default_layers, get_backbone_spec
from normadd.errors import UnknownBackboneError, WeightsMismatchError, WeightsNotFoundError


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """A user's own small open_clip model config, given as a file (not one normadd ships)."""
    config = json.loads((_CONFIG_DIR / "normadd-tiny-random.json").read_text())
    path = tmp_path / "my-tiny-vit.json"
    path.write_text(json.dumps(config))
    return path


def test_an_open_clip_model_with_its_pretrained_tag_is_a_backbone() -> None:
    spec = get_backbone_spec("ViT-B-16:laion2b_s34b_b88k")
    assert (spec.open_clip_name, spec.pretrained_tag) == ("ViT-B-16", "laion2b_s34b_b88k")
    assert spec.image_size == 224 and spec.layers == (3, 6, 9, 12)


def test_an_unknown_pretrained_tag_lists_the_real_ones() -> None:
    with pytest.raises(UnknownBackboneError, match=r"no pretrained tag 'nonsense' for ViT-B-16: use one of .*laion2b"):
        get_backbone_spec("ViT-B-16:nonsense")


def test_an_unknown_backbone_names_every_accepted_form() -> None:
    with pytest.raises(UnknownBackboneError, match=r"MODEL:TAG .* model config .json"):
        get_backbone_spec("not-a-model")


def test_open_clip_weights_resolve_like_named_ones_offline() -> None:
    message = r"no weights for backbone 'ViT-B-16:laion2b_s34b_b88k'.*--weights PATH"
    with pytest.raises(WeightsNotFoundError, match=message):
        ClipEncoder.from_name("ViT-B-16:laion2b_s34b_b88k")


def test_default_layers_are_four_evenly_spaced_blocks() -> None:
    assert default_layers(24) == (6, 12, 18, 24)
    assert default_layers(12) == (3, 6, 9, 12)
    assert default_layers(2) == (1, 2)


def test_a_model_config_file_is_a_backbone(tiny_config: Path) -> None:
    encoder = ClipEncoder.from_name(str(tiny_config), weights="random", layers=(2, 4), image_size=48)
    assert encoder.spec.open_clip_name == "my-tiny-vit" and encoder.spec.layers == (2, 4)
    assert encoder.image_size == 48 and encoder.is_random
    features = encoder.encode_images(encoder.preprocess(torch.rand(1, 3, 48, 48)))
    assert features.grid_size == (6, 6) and len(features.patch_tokens) == 2


def test_a_model_config_file_without_weights_is_one_line_naming_the_options(tiny_config: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match=r"pass --weights PATH.*--weights random"):
        ClipEncoder.from_name(str(tiny_config))


def test_a_model_config_file_with_weights_loads_them(tiny_config: Path, tmp_path: Path) -> None:
    source = ClipEncoder.from_name(str(tiny_config), weights="random")
    path = tmp_path / "weights.pt"
    state = {k: v + 0.01 for k, v in source.model.state_dict().items()}
    torch.save(state, path)
    loaded = ClipEncoder.from_name(str(tiny_config), weights=path)
    assert not loaded.is_random and loaded.weights.origin == "argument"
    assert torch.equal(loaded.model.state_dict()["visual.proj"], state["visual.proj"])


@pytest.mark.parametrize(("content", "message"), [("{not json", "cannot be read as JSON"), ("{}", "needs vision_cfg")])
def test_a_bad_model_config_file_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UnknownBackboneError, match=message):
        get_backbone_spec(str(path))


def test_a_missing_model_config_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UnknownBackboneError, match=r"does not exist: fix --backbone"):
        get_backbone_spec(str(tmp_path / "missing.json"))


def test_image_size_changes_the_run_size_and_must_fit_the_patches() -> None:
    assert get_backbone_spec("ViT-L-14-336", image_size=336).image_size == 336
    assert get_backbone_spec("ViT-L-14-336").image_size == 518
    with pytest.raises(WeightsMismatchError, match=r"--image-size 500 must be a multiple of .* 14, e.g. 490"):
        get_backbone_spec("ViT-L-14-336", image_size=500)


def test_weights_random_runs_a_named_backbone_without_weights() -> None:
    encoder = ClipEncoder.from_name("tiny-random-winclip", weights="random")
    assert encoder.is_random


def test_an_openai_tag_gets_quick_gelu_as_open_clip_gives_it_and_vit_l_keeps_aprilgans_gelu() -> None:
    assert get_backbone_spec("ViT-B-16:openai").quick_gelu
    assert not get_backbone_spec("ViT-B-16:laion2b_s34b_b88k").quick_gelu
    assert not get_backbone_spec("ViT-L-14-336").quick_gelu
