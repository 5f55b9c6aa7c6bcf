"""Named CLIP backbones normadd knows: which open_clip model, which weights tag, run size, taps.

Like timm's ``pretrained_cfg``, a spec carries everything a caller would otherwise hard-code
(input size, normalisation, tapped layers), so the rest of normadd never guesses.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import open_clip

from normadd.errors import UnknownBackboneError, WeightsMismatchError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_RANDOM = "tiny-random"
WINCLIP_BACKBONE = "ViT-B-16-plus-240"
TINY_RANDOM_WINCLIP = "tiny-random-winclip"


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build and run one CLIP backbone.

    Attributes:
        name: The normadd name users type (``--backbone``).
        open_clip_name: The open_clip model config name.
        pretrained_tag: open_clip pretrained tag whose cache/download is tried, or None.
        image_size: Side of the square input the model runs at (position embeddings are
            interpolated to it when it differs from the config's native size).
        layers: Tapped transformer blocks, 1-based; tokens are read right after each block.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        random_init: True for test backbones that are never meant to carry trained weights.
        seed: Seed of the random initialisation when no weights are loaded.
    """

    name: str
    open_clip_name: str
    pretrained_tag: str | None
    image_size: int
    layers: tuple[int, ...]
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    random_init: bool = False
    seed: int = 0
    hf_filenames: tuple[str, ...] = field(default=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))


BACKBONES: dict[str, BackboneSpec] = {
    "ViT-L-14-336": BackboneSpec(
        name="ViT-L-14-336",
        open_clip_name="ViT-L-14-336",
        pretrained_tag="openai",
        image_size=518,
        layers=(6, 12, 18, 24),
    ),
    TINY_RANDOM: BackboneSpec(
        name=TINY_RANDOM,
        open_clip_name="normadd-tiny-random",
        pretrained_tag=None,
        image_size=80,
        layers=(1, 2, 3, 4),
        random_init=True,
    ),
    WINCLIP_BACKBONE: BackboneSpec(
        name=WINCLIP_BACKBONE,
        open_clip_name="ViT-B-16-plus-240",
        pretrained_tag="laion400m_e31",
        image_size=240,
        layers=(3, 6, 9, 12),
    ),
    TINY_RANDOM_WINCLIP: BackboneSpec(
        name=TINY_RANDOM_WINCLIP,
        open_clip_name="normadd-tiny-random-winclip",
        pretrained_tag=None,
        image_size=48,
        layers=(1, 2),
        random_init=True,
    ),
}

DEFAULT_BACKBONE = "ViT-L-14-336"


def register_open_clip_configs() -> None:
    """Make normadd's own small model configs (every JSON in ``model_configs/``) known to open_clip."""
    known = set(open_clip.list_models())
    if any(config.stem not in known for config in _CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(_CONFIG_DIR)


def get_backbone_spec(name: str, layers: tuple[int, ...] | None = None) -> BackboneSpec:
    """Return the spec of a known backbone, optionally with other tapped layers.

    Raises:
        UnknownBackboneError: ``name`` is not a known backbone.
        WeightsMismatchError: ``layers`` is empty or not strictly increasing.
    """
    if name not in BACKBONES:
        known = ", ".join(sorted(BACKBONES))
        raise UnknownBackboneError(f"unknown backbone '{name}': choose one of {known}")
    spec = BACKBONES[name]
    if layers is None:
        return spec
    layers = tuple(layers)
    if not layers or any(b <= a for a, b in itertools.pairwise(layers)):
        raise WeightsMismatchError(
            f"tapped layers {list(layers)} must be a non-empty, strictly increasing list of blocks, e.g. 6,12,18,24"
        )
    return BackboneSpec(**{**spec.__dict__, "layers": tuple(layers)})
