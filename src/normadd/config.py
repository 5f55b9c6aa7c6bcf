"""A product line's settings as one dataclass, read from and written to YAML.

The CLI, the Python API (and later the service) build the same :class:`LineConfig`::

    class_name: bottle
    object_name: glass bottle # the word in the prompts (default: class_name, "_" as spaces)
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
    resize: squash            # or letterbox (aspect kept, black borders); masks follow
    image_score: max          # or clip (APRIL-GAN's own pooled-embedding score)
    threshold: 0.42           # decisions: NG when the score is above it (normadd calibrate finds one)
    pixel_size_mm: 0.05       # for acceptance limits in mm

A normality may carry acceptance limits: ``max_area`` (px² or ``"4 mm2"``), ``max_length``
(px or ``"2 mm"``) and ``region`` (a PNG mask where it applies); see :mod:`normadd.decisions.limits`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from normadd.backbone.specs import DEFAULT_BACKBONE
from normadd.detectors.coreset import CORESET_METHODS
from normadd.detectors.registry import check_detector_name
from normadd.errors import NormaddError
from normadd.images import DEFAULT_RESIZE, check_resize_mode
from normadd.normality.text_normality import parse_normality
from normadd.prompts.templates import default_object_name
from normadd.prompts.validation import clean_text

PHRASE_GENERATORS = ("offline", "llm")
FEATURE_PRECISIONS = ("float32", "float16", "int8")
DEFAULT_FEATURE_PRECISION = "float16"  # chosen by measurement: docs/how-to/preview-and-go-live.md
IMAGE_SCORES = ("max", "clip")


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
    """One added normality as configured: text, strength in [0, 1], optional name and acceptance limits.

    Attributes:
        text: Defect text that becomes normal, e.g. ``scratch`` (a string item ``"text:strength"`` also works).
        strength: Suppression strength s in [0, 1]; 0 changes nothing, 1 is the paper's full addition.
        name: Key to remove it by (default: the text).
        max_area: Largest anomalous region it accepts: pixels² of the input image, or text with a unit
            (``"4 mm2"``, needs the line's ``pixel_size_mm``); unset: any size.
        max_length: Longest anomalous region it accepts: pixels, or text with a unit (``"2 mm"``); unset: any.
        region: PNG mask, white where the normality applies (e.g. only the label area); unset: everywhere.
    """

    text: str
    strength: float = 1.0
    name: str | None = None
    max_area: float | str | None = None
    max_length: float | str | None = None
    region: str | None = None

    def __post_init__(self) -> None:
        from normadd.decisions.limits import parse_size

        label = self.name or self.text
        parse_size(self.max_area, f"max_area of normality '{label}'", area=True)
        parse_size(self.max_length, f"max_length of normality '{label}'")

    @property
    def has_limits(self) -> bool:
        """True when a size limit or a region restricts the normality."""
        return self.max_area is not None or self.max_length is not None or self.region is not None

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


@dataclass(frozen=True)
class RetentionSettings:
    """A line's ``retain:`` setting.

    Attributes:
        images: How many of the last inspected images to keep (at least 1).
        features: Precision of the stored projected tokens: ``float16`` (default), ``float32`` or ``int8``.
    """

    images: int
    features: str = DEFAULT_FEATURE_PRECISION

    @classmethod
    def from_setting(cls, value: Any, source: str = "retain") -> RetentionSettings | None:
        """Read the ``retain`` value of a line config (None when retention is off).

        Raises:
            NormaddError: Not a mapping with a positive whole ``images``, or an unknown precision.
        """
        if value is None:
            return None
        example = "e.g. retain: {images: 200}"
        if not isinstance(value, dict) or set(value) - {"images", "features"}:
            raise NormaddError(f"{source} must be a mapping with 'images' (and optionally 'features'): {example}")
        images = value.get("images")
        if isinstance(images, bool) or not isinstance(images, int) or images < 1:
            raise NormaddError(f"{source}.images must be a whole number of images >= 1, got {images!r}: {example}")
        features = value.get("features", DEFAULT_FEATURE_PRECISION)
        if features not in FEATURE_PRECISIONS:
            raise NormaddError(f"{source}.features must be one of {', '.join(FEATURE_PRECISIONS)}, got {features!r}")
        return cls(images, features)


@dataclass
class LineConfig:
    """Settings of one product line.

    Attributes:
        class_name: Product class, e.g. ``bottle`` (the object word of the prompts unless ``object_name`` is set).
        backbone: CLIP backbone of the normality detector (and of APRIL-GAN): a name from ``normadd backbones``
            (``ViT-L-14-336``, ``tiny-random`` for tests), an open_clip ``MODEL:TAG``, or a model config JSON.
        weights: open_clip weights file (``.pt``/``.bin``/``.safetensors``) or ``random``; unset:
            ``NORMADD_WEIGHTS``, then the cache.
        projections: APRIL-GAN projections: a checkpoint path or a name (``aprilgan-visa``, ``aprilgan-mvtec``);
            unset: ``aprilgan-visa`` for ViT-L-14-336 where it resolves, else the training-free fallback.
        layers: Tapped blocks of the CLIP image encoder, e.g. ``[6, 12, 18, 24]``; unset: the backbone's own.
        object_name: The object word in every prompt; unset: the class name with ``_`` as spaces.
        image_size: Side of the square the backbone runs at; unset: the backbone's default.
        resize: How images become square: ``squash`` (APRIL-GAN's convention) or ``letterbox``; masks follow.
        image_score: ``max`` of the anomaly map, or ``clip`` (APRIL-GAN's pooled-embedding score).
        phrase_generator: ``offline`` (built-in lexicon) or ``llm`` (an OpenAI-compatible endpoint, the
            ``[llm]`` extra).
        normalities: Text normalities active on the line: mappings (keys below) or ``"text:strength"`` strings.
        examples: Visual normalities: example images with optional masks (keys below).
        detector: The anomaly detector: ``aprilgan``, ``winclip``, ``patchcore``, ``maps``, ``anomalib``,
            ``onnx`` or ``openvino``.
        detector_backbone: The detector's backbone (WinCLIP: ``ViT-B-16-plus-240``; PatchCore: ``wide_resnet50_2``;
            anomalib: the model class of a ``.ckpt``, e.g. ``Patchcore``).
        detector_weights: The detector's weights: an open_clip file, a torchvision state_dict or ``random``, or an
            anomalib model (``.ckpt``/``.pt``).
        shots: WinCLIP reference images: 0 (zero-shot), 1 or 5 (WinCLIP+).
        reference: Folder of normal images (WinCLIP+ shots, PatchCore fit); any sizes, resized like test images.
        maps: Folder of saved anomaly maps (``detector: maps``), matched by relative path, file stem as fallback.
        memory_bank: PatchCore memory bank file: loaded when it exists (settings checked), else fitted and saved.
        retain: Retention of inspected images for previews, e.g. ``{images: 200}`` (see :class:`RetentionSettings`).
        model: An anomalib ONNX/OpenVINO export (``detector: onnx`` or ``openvino``).
        threshold: NG when a score is above it; unset leaves verdicts undecided (``normadd calibrate`` finds one).
        threshold_scale: The detector identity the threshold was calibrated for (set by normadd; a change makes
            the threshold stale).
        pixel_size_mm: Millimetres per input-image pixel, for acceptance limits given in mm.
        approval: ``none`` (default) or ``required``: every change waits for a second person's approval.
        approval_expires_hours: Hours after which a change waiting for approval expires.
        coreset: PatchCore's coreset selection when fitting: ``exact`` (anomalib's picks) or ``fast``.
    """

    class_name: str
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    projections: str | None = None
    layers: list[int] | None = None
    # The word for the object in every prompt; the class folder name (``_`` as spaces) when None.
    object_name: str | None = None
    image_size: int | None = None
    resize: str = DEFAULT_RESIZE
    image_score: str = "max"
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
    # Retention (issue 12): keep the last N inspected images, e.g. {"images": 200}.
    retain: dict[str, Any] | None = None
    model: str | None = None  # an anomalib ONNX/OpenVINO export (detector: onnx | openvino)
    # Decisions (issue 11): NG when a score is above ``threshold``; ``threshold_scale`` is the
    # detector identity it was calibrated for (normadd.decisions.scale); mm per image pixel.
    threshold: float | None = None
    threshold_scale: dict[str, str] | None = None
    pixel_size_mm: float | None = None
    # Authority (issue 18): "required" makes every change wait for a second person's approval.
    approval: str = "none"
    approval_expires_hours: float = 72.0
    # PatchCore's coreset selection when fitting (issue 15): exact (anomalib's picks) or fast.
    coreset: str = "exact"

    def __post_init__(self) -> None:
        from normadd.decisions.limits import check_pixel_size, parse_size
        from normadd.decisions.thresholds import check_threshold

        self.class_name = clean_text(self.class_name, "class name")
        if self.object_name is not None:
            self.object_name = clean_text(self.object_name, "object name")
        RetentionSettings.from_setting(self.retain)
        if self.approval not in ("none", "required"):
            raise NormaddError(f"approval '{self.approval}' is unknown: use none or required")
        if not float(self.approval_expires_hours) > 0:
            raise NormaddError(f"approval_expires_hours must be above 0, got {self.approval_expires_hours}")
        check_detector_name(self.detector)
        if self.coreset not in CORESET_METHODS:
            raise NormaddError(f"coreset '{self.coreset}' is unknown: use {' or '.join(CORESET_METHODS)}")
        check_resize_mode(self.resize)
        if self.image_score not in IMAGE_SCORES:
            raise NormaddError(f"image_score '{self.image_score}' is unknown: use {' or '.join(IMAGE_SCORES)}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 16):
            raise NormaddError(f"image_size {self.image_size!r} must be a whole number of pixels, at least 16")
        if self.threshold is not None:
            self.threshold = check_threshold(self.threshold)
        self.pixel_size_mm = check_pixel_size(self.pixel_size_mm)
        for setting in self.normalities:
            label = setting.name or setting.text
            for key, area in (("max_area", True), ("max_length", False)):
                size = parse_size(getattr(setting, key), f"{key} of normality '{label}'", area)
                if size is not None:
                    size.in_pixels(self.pixel_size_mm, area, f"{key} of normality '{label}'")
        if self.phrase_generator not in PHRASE_GENERATORS:
            raise NormaddError(
                f"phrase_generator '{self.phrase_generator}' is unknown: use {' or '.join(PHRASE_GENERATORS)}"
            )

    @property
    def prompt_object(self) -> str:
        """The object word the prompts use: ``object_name``, else the class name with ``_`` as spaces."""
        return self.object_name or default_object_name(self.class_name)

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
    **overrides: Any,
) -> LineConfig:
    """The line config a command builds: the YAML file if given, then the options that override it.

    Args:
        config_file: A line YAML file, or None.
        class_name: Overrides the file's class name (required without a file).
        backbone: Overrides ``backbone``.
        weights: Overrides ``weights``.
        projections: Overrides ``projections`` (a name such as ``aprilgan-visa`` or a path).
        **overrides: Any other :class:`LineConfig` field by name; None leaves the file's value.

    Raises:
        NormaddError: Neither a config file nor a class name, a bad config file, or a bad value.
    """
    if config_file is not None:
        config = LineConfig.from_yaml(config_file)
    elif class_name is None:
        raise NormaddError("--class-name is required (or --config line.yaml): e.g. --class-name bottle")
    else:
        config = LineConfig(class_name=class_name)
    return apply_overrides(
        config, class_name=class_name, backbone=backbone, weights=weights, projections=projections, **overrides
    )


def apply_overrides(config: LineConfig, **overrides: Any) -> LineConfig:
    """Set every given (not None) :class:`LineConfig` field on ``config`` and check the result.

    Paths become strings, as a YAML file would hold them.

    Raises:
        NormaddError: A value the config refuses (one line).
        TypeError: A name that is not a config field (a programming error).
    """
    known = set(LineConfig.__dataclass_fields__)
    for key, value in overrides.items():
        if key not in known:
            raise TypeError(f"unknown line setting '{key}'")
        if value is not None:
            setattr(config, key, str(value) if isinstance(value, Path) else value)
    config.__post_init__()  # check the overridden values as a file's would be
    return config
