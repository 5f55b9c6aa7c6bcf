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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from normadd.backbone.specs import DEFAULT_BACKBONE
from normadd.errors import NormaddError
from normadd.normality.text_normality import parse_normality
from normadd.prompts.validation import clean_text

PHRASE_GENERATORS = ("offline", "llm")


@dataclass
class NormalitySetting:
    """One added normality as configured: text, strength in [0, 1], optional name."""

    text: str
    strength: float = 1.0
    name: str | None = None

    @classmethod
    def parse(cls, spec: str) -> NormalitySetting:
        """From ``"text"`` or ``"text:strength"``."""
        text, strength = parse_normality(spec)
        return cls(clean_text(text), strength)


@dataclass
class LineConfig:
    """Settings of one product line."""

    class_name: str
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    projections: str | None = None
    layers: list[int] | None = None
    phrase_generator: str = "offline"
    normalities: list[NormalitySetting] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.class_name = clean_text(self.class_name, "class name")
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
        return cls(**{**data, "normalities": settings})

    @classmethod
    def from_yaml(cls, path: str | Path) -> LineConfig:
        """Read a line config file.

        Raises:
            NormaddError: Missing file, bad YAML or bad keys (one line each).
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
        try:
            return cls.from_dict(data, str(path))
        except TypeError as error:
            raise NormaddError(f"config file {path}: {error}") from None

    def to_yaml(self) -> str:
        """The config as YAML text."""
        data = asdict(self)
        data["normalities"] = [{k: v for k, v in asdict(n).items() if v is not None} for n in self.normalities]
        return yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False)
