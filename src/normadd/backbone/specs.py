"""Named CLIP backbones normadd knows: which open_clip model, which weights tag, run size, taps.

Like timm's ``pretrained_cfg``, a spec carries everything a caller would otherwise hard-code
(input size, normalisation, tapped layers), so the rest of normadd never guesses.

Besides the named backbones, ``--backbone`` takes any open_clip model: ``MODEL:TAG`` (an open_clip
model with its pretrained tag, e.g. ``ViT-B-16:laion2b_s34b_b88k``), a bare open_clip model name
(weights from ``--weights``), or an open_clip model config JSON file (``vision_cfg``/``text_cfg``).
Their spec comes from open_clip's own config: run size = the config's image size, tapped layers =
four evenly spaced blocks ending at the last (6,12,18,24 for 24 blocks), mean/std from the
pretrained config.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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
        quick_gelu: Build the model with QuickGELU, as open_clip does for a ``MODEL:TAG`` whose
            pretrained config asks for it (OpenAI's own weights). The named ViT-L-14-336 keeps
            plain GELU, as APRIL-GAN runs it.
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
    quick_gelu: bool = False
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


def default_layers(depth: int) -> tuple[int, ...]:
    """Four evenly spaced blocks ending at the last one (APRIL-GAN taps 6,12,18,24 of ViT-L's 24)."""
    if depth < 4:
        return tuple(range(1, depth + 1))
    return tuple(dict.fromkeys(depth * k // 4 for k in (1, 2, 3, 4)))


def _spec_from_open_clip(name: str, open_clip_name: str, tag: str | None, config: dict[str, Any]) -> BackboneSpec:
    vision = config.get("vision_cfg") or {}
    if not isinstance(vision.get("layers"), int) or not vision.get("image_size"):
        raise UnknownBackboneError(
            f"backbone '{name}' is not a ViT CLIP (its vision_cfg has no integer 'layers'): pick a ViT model"
        )
    size = vision["image_size"]
    pretrained = open_clip.get_pretrained_cfg(open_clip_name, tag) if tag else {}
    preprocess = config.get("preprocess_cfg") or {}
    mean = tuple(pretrained.get("mean") or preprocess.get("mean") or OPENAI_MEAN)
    std = tuple(pretrained.get("std") or preprocess.get("std") or OPENAI_STD)
    return BackboneSpec(
        name=name,
        open_clip_name=open_clip_name,
        pretrained_tag=tag,
        image_size=int(size if isinstance(size, int) else size[0]),
        layers=default_layers(vision["layers"]),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        quick_gelu=bool(pretrained.get("quick_gelu", False) or config.get("quick_gelu", False)),
    )


def _spec_from_config_file(path: Path) -> BackboneSpec:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnknownBackboneError(f"backbone config {path} cannot be read as JSON ({error}): fix --backbone") from None
    if not isinstance(config, dict) or "vision_cfg" not in config or "text_cfg" not in config:
        raise UnknownBackboneError(
            f"backbone config {path} is not an open_clip model config (needs vision_cfg and text_cfg): fix --backbone"
        )
    open_clip.add_model_config(path)  # registered under the file's stem
    return _spec_from_open_clip(str(path), path.stem, None, config)


def _spec_from_open_clip_name(name: str) -> BackboneSpec | None:
    model, _, tag = name.partition(":")
    config = open_clip.get_model_config(model)
    if config is None:
        return None
    if tag:
        tags = open_clip.list_pretrained_tags_by_model(model)
        if tag not in tags:
            raise UnknownBackboneError(
                f"open_clip has no pretrained tag '{tag}' for {model}: use one of {', '.join(tags) or 'none'}"
            )
    return _spec_from_open_clip(name, model, tag or None, config)


def get_backbone_spec(
    name: str, layers: tuple[int, ...] | None = None, image_size: int | None = None
) -> BackboneSpec:
    """Return the spec of a backbone, optionally with other tapped layers or run size.

    Args:
        name: A named backbone (``normadd backbones``), an open_clip ``MODEL:TAG`` or model name,
            or the path of an open_clip model config JSON file.
        layers: Tapped blocks (1-based); the spec's default when None.
        image_size: Side of the square the model runs at; the spec's default when None.

    Raises:
        UnknownBackboneError: ``name`` is none of these.
        WeightsMismatchError: ``layers`` is empty or not strictly increasing, or ``image_size``
            is not a multiple of the patch size.
    """
    register_open_clip_configs()
    if name in BACKBONES:
        spec = BACKBONES[name]
    elif name.endswith(".json"):
        if not Path(name).is_file():
            raise UnknownBackboneError(f"backbone config {name} does not exist: fix --backbone")
        spec = _spec_from_config_file(Path(name))
    else:
        found = _spec_from_open_clip_name(name)
        if found is None:
            known = ", ".join(sorted(BACKBONES))
            raise UnknownBackboneError(
                f"unknown backbone '{name}': choose one of {known}, an open_clip MODEL:TAG "
                "(e.g. ViT-B-16:laion2b_s34b_b88k) or an open_clip model config .json file"
            )
        spec = found
    if image_size is not None:
        patch = (open_clip.get_model_config(spec.open_clip_name) or {}).get("vision_cfg", {}).get("patch_size", 1)
        patch = patch if isinstance(patch, int) else patch[0]
        if image_size < patch or image_size % patch:
            raise WeightsMismatchError(
                f"--image-size {image_size} must be a multiple of {spec.name}'s patch size {patch}, "
                f"e.g. {max(patch, image_size // patch * patch)}"
            )
        spec = replace(spec, image_size=int(image_size))
    if layers is None:
        return spec
    layers = tuple(layers)
    if not layers or any(b <= a for a, b in itertools.pairwise(layers)):
        raise WeightsMismatchError(
            f"tapped layers {list(layers)} must be a non-empty, strictly increasing list of blocks, e.g. 6,12,18,24"
        )
    return replace(spec, layers=tuple(layers))
