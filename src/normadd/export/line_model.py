"""A registry line served by its export (``normadd serve --runtime onnx|openvino --export DIR``).

An export carries its normalities as graph constants, so the registry and the export must agree:
the line's class, backbone, weights and active normalities are compared with the manifest when
the line is loaded and again whenever the registry changes; any difference refuses the export
(or the inspection) with the differences named. Adding or removing a normality through a service
that runs an export is refused too: change it in the registry, re-export and restart.
"""

from __future__ import annotations

import threading
from pathlib import Path

from torch import Tensor

from normadd.decisions.policy import DecisionPolicy, ThresholdSetting
from normadd.errors import NormaddError
from normadd.export.manifest import LineManifest
from normadd.export.runtime import ExportedLine, normality_differences, setting_differences
from normadd.normality.addition import AdditionResult
from normadd.registry.line_model import line_config
from normadd.registry.store import LineRecord, NormalityRecord, Registry


class ExportMismatchError(NormaddError):
    """An export whose line settings or normalities differ from the line it is meant to serve."""


def export_differences(
    manifest: LineManifest, line: LineRecord, active: list[tuple[str, str, float]]
) -> list[str]:
    """What differs between an export and a stored line with its active normalities."""
    problems = setting_differences(manifest, line_config(line))
    return problems + normality_differences(manifest.normalities, active)


def check_export(manifest: LineManifest, folder: Path, line: LineRecord, active: list[tuple[str, str, float]]) -> None:
    """Refuse an export that is not ``line`` with ``active`` normalities.

    Raises:
        ExportMismatchError: The differences, named, and the fix.
    """
    problems = export_differences(manifest, line, active)
    if problems:
        raise ExportMismatchError(
            f"export {folder} does not match line '{line.name}' ({'; '.join(problems)}): re-export the line "
            f"('normadd export --config ...' with its active normalities) or change the line"
        )


def _active(records: list[NormalityRecord]) -> list[tuple[str, str, float]]:
    return [(r.name, r.text, r.strength) for r in records]


class ExportedLineModel:
    """The service's view of a line run by its export: the same methods as :class:`LineModel`."""

    def __init__(self, line: LineRecord, exported: ExportedLine) -> None:
        self.line = line
        self.exported = exported
        self.revision = -1
        self._lock = threading.Lock()

    @classmethod
    def load(cls, registry: Registry, name: str, folder: str | Path, runtime: str) -> ExportedLineModel:
        """Load the export and check it against the line's stored settings and active normalities.

        Raises:
            LineNotFoundError: No such line.
            ExportedModelError: The export cannot be read.
            ExportMismatchError: It is not this line (the differences are named).
        """
        line = registry.line(name)
        model = cls(line, ExportedLine(folder, runtime))
        model._check(registry)
        return model

    def _check(self, registry: Registry) -> None:
        self.revision = registry.revision(self.line.name)
        active = _active(registry.normalities(self.line.name))
        check_export(self.exported.manifest, self.exported.folder, self.line, active)

    @property
    def input_size(self) -> int:
        """Side of the images the export takes."""
        return self.exported.input_size

    @property
    def is_random(self) -> bool:
        """True when the exported backbone had random weights."""
        return self.exported.is_random

    @property
    def description(self) -> str:
        """The export and its runtime in one line."""
        return self.exported.description

    @property
    def features_identity(self) -> str:
        """Names the export retained images were scored by (an export keeps no projected tokens)."""
        manifest = self.exported.manifest
        return f"export|{manifest.backbone}|{manifest.weights_sha256}|{self.exported.folder.name}"

    def refresh(self, registry: Registry) -> None:
        """Check the export against the registry's line again if the registry changed.

        Raises:
            ExportMismatchError: The line's settings or active normalities moved away from the export.
        """
        with self._lock:
            if registry.revision(self.line.name) != self.revision:
                self._check(registry)

    def explain(
        self, images: Tensor, registry: Registry | None = None, keep_projected: bool = False
    ) -> AdditionResult:
        """Maps and scores from the export, after checking the registry has not moved away from it.

        ``keep_projected`` is accepted for the service's retention and ignored: an export returns
        maps and scores only, so retained images of an exported line carry no tokens to preview on.

        Raises:
            ExportMismatchError: The line's active normalities changed since the export was made.
        """
        with self._lock:
            if registry is not None and registry.revision(self.line.name) != self.revision:
                self._check(registry)
            return self.exported.explain(images)

    def policy(self, registry: Registry) -> DecisionPolicy:
        """The line's decision policy as the registry holds it (threshold, limits), applied to the export's maps.

        Raises:
            DecisionError: Stored limits that cannot be used (e.g. a region mask that is gone).
        """
        stored = registry.threshold(self.line.name)
        threshold = None if stored is None else ThresholdSetting(stored.value, stored.scale, stored.method)
        limits = {n.name: n.limits for n in registry.normalities(self.line.name) if n.limits}
        return DecisionPolicy.from_config(line_config(self.line), threshold, limits)

    def _refuse(self, action: str) -> ExportMismatchError:
        return ExportMismatchError(
            f"line '{self.line.name}' is served from the export {self.exported.folder}, whose normalities are fixed: "
            f"{action} with 'normadd normality', re-export the line and restart the service"
        )

    def add(
        self,
        registry: Registry,
        text: str,
        strength: float,
        who: str,
        why: str = "",
        name: str | None = None,
        limits: dict[str, object] | None = None,
        state: str = "active",
        until: str | None = None,
    ) -> NormalityRecord:
        """Refused: an export's normalities are graph constants."""
        raise self._refuse("add the normality")

    def prepare(
        self,
        text: str,
        strength: float,
        name: str | None = None,
        limits: dict[str, object] | None = None,
        state: str = "active",
        until: str | None = None,
    ) -> NormalityRecord:
        """Refused: a change proposed for approval could never apply to the export's fixed graph."""
        raise self._refuse("add the normality")

    def prepare_example(
        self,
        images: object,
        masks: object,
        strength: float,
        name: str | None = None,
        source_names: object = None,
    ) -> NormalityRecord:
        """Refused: visual normalities cannot be exported, nor proposed on an exported line."""
        raise self._refuse("add the normality")

    def activate(self, registry: Registry, name: str, who: str, why: str = "") -> NormalityRecord:
        """Refused: an export's normalities are graph constants."""
        raise self._refuse("activate the normality")

    def add_example(
        self,
        registry: Registry,
        images: object,
        masks: object,
        strength: float,
        who: str,
        why: str = "",
        name: str | None = None,
        source_names: object = None,
    ) -> NormalityRecord:
        """Refused: an export's normalities are graph constants (and visual ones cannot be exported)."""
        raise self._refuse("add the normality")

    def remove(self, registry: Registry, name: str, who: str, why: str = "") -> NormalityRecord:
        """Refused: an export's normalities are graph constants."""
        raise self._refuse("remove the normality")

    def active(self) -> list[dict[str, object]]:
        """Name and strength of each normality in the export."""
        return [{"name": n.name, "strength": n.strength} for n in self.exported.manifest.normalities]
