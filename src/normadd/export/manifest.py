"""The manifest an exported line carries: what the graph expects and which line it was.

``manifest.json`` beside the model file says everything a runtime needs without normadd's torch
stack (input name, size, value range, resize mode, mean/std, output names) and everything a service
checks before it trusts the export (class, object word, backbone, weights SHA-256, normalities with
texts, phrases and strengths, the normadd version that wrote it, the decision threshold if set).

``resize`` is the line's ``resize`` (``squash`` or ``letterbox``): the graph takes square images,
and whoever feeds it decodes each image with that mode (:func:`normadd.images.load_image`), as the
torch line does. normadd's runtimes honour it; a manifest naming another mode is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from normadd.cache import atomic_write_bytes
from normadd.errors import ExportedModelError as ExportError
from normadd.images import DEFAULT_RESIZE, RESIZE_MODES

MANIFEST_NAME = "manifest.json"
FORMAT = "normadd-line-export"
FORMAT_VERSION = 1
FORMATS = ("onnx", "openvino")


def normadd_version() -> str:
    """The installed normadd version ("0+unknown" when running from an uninstalled tree)."""
    try:
        return version("normadd")
    except PackageNotFoundError:
        return "0+unknown"


def file_sha256(path: str | Path | None, chunk: int = 1 << 20) -> str | None:
    """SHA-256 of a file in hex, None when there is no file."""
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ExportedNormality:
    """One normality baked into an exported graph."""

    name: str
    text: str
    strength: float
    phrases: list[str] = field(default_factory=list)


@dataclass
class LineManifest:
    """What ``manifest.json`` holds (see the module docstring)."""

    format: str
    model_file: str
    input_name: str
    input_size: int
    mean: list[float]
    std: list[float]
    map_size: int
    outputs: list[str]
    class_name: str
    backbone: str
    layers: list[int]
    weights: str | None
    weights_sha256: str | None
    projections: str | None
    projections_sha256: str | None
    random_weights: bool
    normalities: list[ExportedNormality]
    normadd_version: str
    threshold: float | None = None
    threshold_scale: dict[str, str] | None = None
    input_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    input_layout: str = "NCHW RGB float32, batch 1..64"
    resize: str = DEFAULT_RESIZE
    object_name: str | None = None
    normalized_in_graph: bool = True
    manifest_format: str = FORMAT
    manifest_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The manifest as indented JSON text."""
        return json.dumps(asdict(self), indent=2)

    def write(self, folder: Path) -> Path:
        """Write ``manifest.json`` into ``folder`` atomically; returns its path."""
        path = folder / MANIFEST_NAME
        atomic_write_bytes(path, (self.to_json() + "\n").encode())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> LineManifest:
        """Build from parsed JSON.

        Raises:
            ExportError: Not a normadd manifest, another manifest version, or missing keys.
        """
        if data.get("manifest_format") != FORMAT:
            raise ExportError(f"{source} is not a normadd line manifest: export the line with 'normadd export'")
        if data.get("manifest_version") != FORMAT_VERSION:
            raise ExportError(
                f"{source} has manifest version {data.get('manifest_version')}, this normadd reads "
                f"{FORMAT_VERSION}: re-export the line with this normadd ('normadd export')"
            )
        known = set(cls.__dataclass_fields__)
        missing = sorted(k for k, f in cls.__dataclass_fields__.items() if k not in data and _required(f))
        if missing:
            raise ExportError(f"{source} lacks {missing}: re-export the line with 'normadd export'")
        values = {k: v for k, v in data.items() if k in known}
        if values.get("resize", DEFAULT_RESIZE) not in RESIZE_MODES:
            raise ExportError(
                f"{source} has resize {values.get('resize')!r}, not one of {', '.join(RESIZE_MODES)}: "
                "re-export the line with this normadd ('normadd export')"
            )
        try:
            values["normalities"] = [ExportedNormality(**n) for n in data["normalities"]]
            return cls(**values)
        except TypeError as error:
            raise ExportError(f"{source} is malformed ({error}): re-export the line with 'normadd export'") from None

    @classmethod
    def read(cls, folder: str | Path) -> LineManifest:
        """Read ``manifest.json`` from an export folder.

        Raises:
            ExportError: No folder or manifest, bad JSON, or a manifest this normadd cannot use.
        """
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise ExportError(f"export folder {folder} does not exist: pass the --out folder of 'normadd export'")
        if not path.is_file():
            raise ExportError(f"{folder} has no {MANIFEST_NAME}: pass the --out folder of 'normadd export'")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ExportError(f"{path} is not valid JSON ({error}): re-export the line") from None
        if not isinstance(data, dict):
            raise ExportError(f"{path} is not a JSON object: re-export the line")
        return cls.from_dict(data, str(path))

    def check_version(self, source: str) -> None:
        """Refuse an export another normadd version wrote (its graph may compute something else).

        Raises:
            ExportError: The versions differ.
        """
        running = normadd_version()
        if self.normadd_version != running:
            raise ExportError(
                f"{source} was exported by normadd {self.normadd_version}, this is normadd {running}: "
                "re-export the line with this version ('normadd export')"
            )


def _required(item: Any) -> bool:
    from dataclasses import MISSING

    return item.default is MISSING and item.default_factory is MISSING
