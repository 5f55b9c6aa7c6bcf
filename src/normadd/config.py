"""A product line's settings as one dataclass, read from and written to YAML.

The CLI, the Python API (and later the service) build the same :class:`LineConfig`::

    class_name: bottle
    backbone: ViT-L-14-336
    weights: /models/ViT-L-14-336.pt
    projections: /models/aprilgan_visa.pth
    normalities:
      - text: broken
      - text: contamination
        strength: 0.5
    examples:                 # visual normalities: example images, optional masks
      - images: [scuff_01.png]
        masks: [scuff_01_mask.png]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from normadd.backbone.specs import DEFAULT_BACKBONE
from normadd.detectors.registry import check_detector_name
from normadd.errors import NormaddError
from normadd.normality.text_normality import parse_normality
from normadd.prompts.validation import clean_text

PHRASE_GENERATORS = ("offline", "llm")


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file that must hold a mapping.

    Raises:
        NormaddError: Missing file, bad YAML, or not a mapping (one line each).
    """
    path = Path(path)
    if not path.is_file():
        raise NormaddError(f"config file {path} does not exist: fix --config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise NormaddError(f"config file {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise NormaddError(f"config file {path} must be a mapping with at least class_name")
    return data


@dataclass
class NormalitySetting:
    """One added normality as configured: text, strength in [0, 1], optional name.

    Attributes:
        text: Defect text that becomes normal, e.g. ``scratch`` (a string item ``"text:strength"`` also works).
        strength: Suppression strength s in [0, 1]; 0 changes nothing, 1 is the paper's full addition.
        name: Key to remove it by (default: the text).
    """

    text: str
    strength: float = 1.0
    name: str | None = None

    @classmethod
    def parse(cls, spec: str) -> NormalitySetting:
        """From ``"text"`` or ``"text:strength"``."""
        text, strength = parse_normality(spec)
        return cls(clean_text(text), strength)


@dataclass
class ExampleSetting:
    """One visual normality as configured: example images, optional masks (one per image), strength, name.

    Attributes:
        images: Example images of the defect to accept (a single path also works).
        masks: The defect's mask in each example, in the same order; without masks the whole image is the example.
        strength: Suppression strength s in [0, 1].
        name: Key to remove it by (default: derived from the first image's name).
    """

    images: list[str]
    masks: list[str] | None = None
    strength: float = 1.0
    name: str | None = None

    @classmethod
    def parse(cls, item: str | dict[str, Any]) -> ExampleSetting:
        """From an image path or a mapping (``images``, ``masks``, ``strength``, ``name``)."""
        if isinstance(item, str):
            return cls([item])
        images = item.get("images")
        if isinstance(images, str):
            item = {**item, "images": [images]}
        if isinstance(item.get("masks"), str):
            item = {**item, "masks": [item["masks"]]}
        return cls(**item)


@dataclass
class LineConfig:
    """Settings of one product line.

    Attributes:
        class_name: Product class, as the prompts name it, e.g. ``bottle``.
        backbone: CLIP backbone of the normality detector (and of APRIL-GAN): ``ViT-L-14-336`` or ``tiny-random``
            (random weights, for tests); ``normadd backbones`` lists them.
        weights: open_clip weights file (``.pt``/``.bin``/``.safetensors``); unset: ``NORMADD_WEIGHTS``, then the cache.
        projections: APRIL-GAN projections checkpoint (normadd's or the official one); unset: the training-free
            fallback through CLIP's ``ln_post`` and ``proj``.
        layers: Tapped blocks of the CLIP image encoder, e.g. ``[6, 12, 18, 24]``; unset: the backbone's own.
        phrase_generator: ``offline`` (built-in lexicon) or ``llm`` (an OpenAI-compatible endpoint, the
            ``[llm]`` extra).
        normalities: Text normalities active on the line: mappings (keys below) or ``"text:strength"`` strings.
        examples: Visual normalities: example images with optional masks (keys below).
        detector: The anomaly detector: ``aprilgan``, ``winclip``, ``patchcore``, ``maps`` or ``anomalib``.
        detector_backbone: The detector's backbone (WinCLIP: ``ViT-B-16-plus-240``; PatchCore: ``wide_resnet50_2``;
            anomalib: the model class of a ``.ckpt``, e.g. ``Patchcore``).
        detector_weights: The detector's weights: an open_clip file, a torchvision state_dict or ``random``, or an
            anomalib model (``.ckpt``/``.pt``).
        shots: WinCLIP reference images: 0 (zero-shot), 1 or 5 (WinCLIP+).
        reference: Folder of normal images (WinCLIP+ shots, PatchCore fit).
        maps: Folder of saved anomaly maps (``detector: maps``), matched to images by file stem.
        memory_bank: PatchCore memory bank file: loaded when it exists (settings checked), else fitted and saved.
    """

    class_name: str
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    projections: str | None = None
    layers: list[int] | None = None
    phrase_generator: str = "offline"
    normalities: list[NormalitySetting] = field(default_factory=list)
    examples: list[ExampleSetting] = field(default_factory=list)
    # Detector (issue 5): "aprilgan" shares the CLIP pass; the others run beside the normality detector.
    detector: str = "aprilgan"
    detector_backbone: str | None = None
    detector_weights: str | None = None
    shots: int = 0
    reference: str | None = None
    maps: str | None = None
    memory_bank: str | None = None

    def __post_init__(self) -> None:
        self.class_name = clean_text(self.class_name, "class name")
        check_detector_name(self.detector)
        if self.phrase_generator not in PHRASE_GENERATORS:
            raise NormaddError(
                f"phrase_generator '{self.phrase_generator}' is unknown: use {' or '.join(PHRASE_GENERATORS)}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> LineConfig:
        """Build from a mapping; unknown keys are refused by name."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise NormaddError(f"{source}: unknown keys {unknown}; known keys: {sorted(known)}")
        if "class_name" not in data:
            raise NormaddError(f"{source}: 'class_name' is missing (e.g. class_name: bottle)")
        items = data.get("normalities") or []
        settings = [
            NormalitySetting.parse(item) if isinstance(item, str) else NormalitySetting(**item) for item in items
        ]
        examples = [ExampleSetting.parse(item) for item in data.get("examples") or []]
        return cls(**{**data, "normalities": settings, "examples": examples})

    @classmethod
    def from_yaml(cls, path: str | Path) -> LineConfig:
        """Read a line config file.

        Raises:
            NormaddError: Missing file, bad YAML or bad keys (one line each).
        """
        path = Path(path)
        data = read_yaml_mapping(path)
        try:
            return cls.from_dict(data, str(path))
        except TypeError as error:
            raise NormaddError(f"config file {path}: {error}") from None

    def to_yaml(self) -> str:
        """The config as YAML text."""
        data = asdict(self)
        data["normalities"] = [{k: v for k, v in asdict(n).items() if v is not None} for n in self.normalities]
        data["examples"] = [{k: v for k, v in asdict(e).items() if v is not None} for e in self.examples] or None
        return yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False)


def config_from_options(
    config_file: str | Path | None,
    class_name: str | None,
    backbone: str | None = None,
    weights: str | Path | None = None,
    projections: str | Path | None = None,
) -> LineConfig:
    """The line config a command builds: the YAML file if given, then the options that override it.

    Raises:
        NormaddError: Neither a config file nor a class name, or a bad config file.
    """
    if config_file is not None:
        config = LineConfig.from_yaml(config_file)
    elif class_name is None:
        raise NormaddError("--class-name is required (or --config line.yaml): e.g. --class-name bottle")
    else:
        config = LineConfig(class_name=class_name)
    if class_name is not None:
        config.class_name = clean_text(class_name, "class name")
    if backbone is not None:
        config.backbone = backbone
    if weights is not None:
        config.weights = str(weights)
    if projections is not None:
        config.projections = str(projections)
    return config
