"""The facts of shared/paper/aprilgan_spec.md that are settings rather than formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

from normadd.backbone import ClipEncoder, get_backbone_spec
from normadd.backbone.specs import OPENAI_MEAN, OPENAI_STD, register_open_clip_configs
from normadd.images import load_image


def test_vit_l_runs_at_518_with_a_37_by_37_grid_tapping_blocks_6_12_18_24_with_openai_normalisation() -> None:
    spec = get_backbone_spec("ViT-L-14-336")
    config = open_clip.get_model_config("ViT-L-14-336")
    assert spec.image_size == 518 and spec.image_size // config["vision_cfg"]["patch_size"] == 37
    assert spec.layers == (6, 12, 18, 24)
    assert (spec.mean, spec.std) == (OPENAI_MEAN, OPENAI_STD)
    # Plain (erf) GELU: the config has no quick_gelu key and normadd never forces it.
    assert not config.get("quick_gelu", False)


def test_weights_from_the_native_size_get_bicubic_antialiased_position_embeddings(tmp_path: Path) -> None:
    register_open_clip_configs()
    torch.manual_seed(3)
    native = open_clip.create_model("normadd-tiny-random")  # 56 px: 7 x 7 grid
    path = tmp_path / "tiny.pt"
    torch.save(native.state_dict(), path)
    encoder = ClipEncoder.from_name("tiny-random", weights=path)  # runs at 80 px: 10 x 10 grid
    source = native.visual.positional_embedding.detach()
    grid = source[1:].reshape(1, 7, 7, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(10, 10), mode="bicubic", antialias=True, align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(100, -1)
    loaded = encoder.model.visual.positional_embedding.detach()
    assert torch.equal(loaded[0], source[0])  # the class token's embedding is kept apart
    assert (loaded[1:] - expected).abs().max() < 1e-6
    assert isinstance(encoder.model.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)


def test_preprocessing_squashes_with_pil_bicubic_like_open_clip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 255, size=(60, 120, 3), dtype=np.uint8)).save(path)
    encoder = ClipEncoder.from_name("tiny-random")
    ours = encoder.preprocess(load_image(path, encoder.image_size).unsqueeze(0))[0]
    transform = open_clip.image_transform(
        encoder.image_size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD, resize_mode="squash"
    )
    reference = transform(Image.open(path))
    assert ours.shape == reference.shape == (3, 80, 80)
    assert (ours - reference).abs().max() < 1e-5
