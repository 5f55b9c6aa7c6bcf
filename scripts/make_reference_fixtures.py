"""Write anomalib 2.7's WinCLIP and PatchCore outputs as small fixtures for our equivalence tests.

anomalib's WinCLIP is only correct on open-clip-torch 2.24 (``../shared/notes/anomalib_reference.md``),
which normadd (open_clip 3.x) cannot share an environment with, so this script runs in a separate one::

    python3.11 -m venv /tmp/anomalib-venv
    /tmp/anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/anomalib-venv/bin/pip install "anomalib[clip]==2.7.0"
    /tmp/anomalib-venv/bin/python scripts/make_reference_fixtures.py

It writes ``tests/fixtures/reference/{winclip,patchcore}.pt`` (inputs in [0, 1], weights or their
seed, expected maps and scores) and ``winclip_prompts.json``.

- WinCLIP runs normadd's tiny open_clip config (registered with ``open_clip.add_model_config``,
  set as the module's ``BACKBONE``, ``PRETRAINED = None``) with random image-tower weights (saved)
  and random text embeddings (saved; a random text tower makes nearly constant maps).
- PatchCore runs the real WideResNet-50 (layers 2 and 3) with every weight, BatchNorm statistic
  included, redrawn from a seed by ``tests/helpers/random_weights.py`` (timm's random init zeroes
  ``bn3.weight``); only the seed and a checksum are saved. anomalib's own coreset fills the memory
  bank, which is saved so the comparison does not depend on its random draws. It runs in float64 so the
  expected maps carry no float32 rounding of their own.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from anomalib.models.image.winclip import torch_model as winclip_module
from anomalib.models.image.winclip.prompting import create_prompt_ensemble
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers.random_weights import checksum, redraw  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "reference"
BOTTLE = REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle"
TINY_CONFIG = REPO / "src" / "normadd" / "backbone" / "model_configs" / "normadd-tiny-random-winclip.json"
OPENAI_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
OPENAI_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
IMAGENET_MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
TEST_IMAGES = ("test/broken_large/000.png", "test/contamination/001.png", "test/good/000.png")
REFERENCE_IMAGES = ("train/good/000.png", "train/good/001.png", "train/good/002.png")
PATCHCORE_SEED = 0
PATCHCORE_SIZE = 128


def load(paths: tuple[str, ...], size: int) -> torch.Tensor:
    """Bottle images squashed with PIL bicubic to (size, size), as normadd loads them: (N, 3, S, S)."""
    arrays = []
    for name in paths:
        with Image.open(BOTTLE / name) as image:
            resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(resized, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def winclip_fixture() -> None:
    """Zero-shot and 3-shot WinCLIP maps and scores of the tiny model."""
    open_clip.add_model_config(TINY_CONFIG)
    winclip_module.BACKBONE = TINY_CONFIG.stem
    winclip_module.PRETRAINED = None
    torch.manual_seed(0)
    model = winclip_module.WinClipModel(class_name="bottle").eval()
    size = model.clip.visual.image_size[0]
    text_embeddings = torch.randn(2, model.clip.visual.output_dim, generator=torch.Generator().manual_seed(1))
    model._text_embeddings = text_embeddings
    images = load(TEST_IMAGES, size)
    references = load(REFERENCE_IMAGES, size)
    zero_shot = model((images - OPENAI_MEAN) / OPENAI_STD)
    model.setup(reference_images=(references - OPENAI_MEAN) / OPENAI_STD)
    model._text_embeddings = text_embeddings  # setup() re-encodes the prompts: put the random ones back
    few_shot = model((images - OPENAI_MEAN) / OPENAI_STD)
    torch.save(
        {
            "open_clip_version": importlib.metadata.version("open_clip_torch"),
            "visual_state_dict": model.clip.visual.state_dict(),
            "text_embeddings": text_embeddings,
            "images": images,
            "reference_images": references,
            "zero_shot_maps": zero_shot.anomaly_map,
            "zero_shot_scores": zero_shot.pred_score,
            "few_shot_maps": few_shot.anomaly_map,
            "few_shot_scores": few_shot.pred_score,
        },
        OUT / "winclip.pt",
    )
    normal, anomalous = create_prompt_ensemble("bottle")
    (OUT / "winclip_prompts.json").write_text(json.dumps({"normal": normal, "anomalous": anomalous}, indent=1))
    print(
        f"winclip: maps {tuple(zero_shot.anomaly_map.shape)}, zero-shot range "
        f"{zero_shot.anomaly_map.min():.4f}..{zero_shot.anomaly_map.max():.4f}, few-shot range "
        f"{few_shot.anomaly_map.min():.4f}..{few_shot.anomaly_map.max():.4f}"
    )


def patchcore_fixture() -> None:
    """PatchCore maps and reweighted scores of a redrawn WideResNet-50 with anomalib's memory bank."""
    model = PatchcoreModel(layers=["layer2", "layer3"], backbone="wide_resnet50_2", pre_trained=False, num_neighbors=9)
    backbone = model.feature_extractor.feature_extractor
    weights = redraw(backbone.state_dict(), PATCHCORE_SEED)
    backbone.load_state_dict(weights)
    references = load(REFERENCE_IMAGES, PATCHCORE_SIZE)
    images = load(TEST_IMAGES, PATCHCORE_SIZE)
    # float64, with the float32 memory bank we save: anomalib's float32 distances (expanded square) are off
    # by ~1e-3 on these large-norm features, which would hide real differences.
    model.double()
    model.train()
    model(((references - IMAGENET_MEAN) / IMAGENET_STD).double())
    torch.manual_seed(0)
    np.random.seed(0)
    model.subsample_embedding(sampling_ratio=0.1)
    model.memory_bank = model.memory_bank.float().double()
    model.eval()
    output = model(((images - IMAGENET_MEAN) / IMAGENET_STD).double())
    torch.save(
        {
            "weights_seed": PATCHCORE_SEED,
            "weights_checksum": checksum(weights),
            "images": images,
            "memory_bank": model.memory_bank.float(),
            "maps": output.anomaly_map[:, 0].float(),
            "scores": output.pred_score.float(),
        },
        OUT / "patchcore.pt",
    )
    print(
        f"patchcore: bank {tuple(model.memory_bank.shape)}, maps {tuple(output.anomaly_map.shape)}, "
        f"range {output.anomaly_map.min():.4f}..{output.anomaly_map.max():.4f}, scores {output.pred_score.tolist()}"
    )


def main() -> None:
    """Write both fixtures."""
    OUT.mkdir(parents=True, exist_ok=True)
    winclip_fixture()
    patchcore_fixture()
    for path in sorted(OUT.iterdir()):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
