"""Run an exported line with onnxruntime or OpenVINO: the same results as the torch line.

:class:`ExportedLine` reads an export folder (``manifest.json`` plus ``line.onnx`` or
``line.xml``/``.bin``), checks that this normadd wrote it and that the graph takes the manifest's
input size and gives the maps normadd reads, and answers :meth:`explain` with the
:class:`~normadd.normality.addition.AdditionResult` the torch line gives. :func:`line_differences`
names what differs between an export and a line's settings and active normalities.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from normadd.backbone.specs import get_backbone_spec
from normadd.config import LineConfig
from normadd.detectors.inference_sessions import InferenceSession, check_runtime, open_session
from normadd.errors import ExportedModelError
from normadd.export.graph import OUTPUT_NAMES
from normadd.export.manifest import ExportedNormality, LineManifest, file_sha256
from normadd.normality.addition import AdditionResult

RUNTIME_NAMES = {"onnx": "onnxruntime", "openvino": "OpenVINO (f32)"}
BATCH = 64


class ExportedLine:
    """A line exported by ``normadd export``, run by onnxruntime or OpenVINO.

    Args:
        folder: The export folder.
        runtime: "onnx" (onnxruntime; needs an ONNX export) or "openvino" (reads either format).
        threads: CPU threads for the runtime; its default when None.

    Raises:
        ExportedModelError: No or bad manifest, another normadd version, a model that is not a line
            export, or one made for another input size.
    """

    def __init__(self, folder: str | Path, runtime: str, threads: int | None = None) -> None:
        check_runtime(runtime)
        self.folder = Path(folder)
        self.manifest = LineManifest.read(self.folder)
        self.manifest.check_version(str(self.folder / "manifest.json"))
        model_path = self.folder / self.manifest.model_file
        if runtime == "onnx" and model_path.suffix != ".onnx":
            raise ExportedModelError(
                f"{self.folder} holds an OpenVINO export ({model_path.name}): run it with --runtime openvino, "
                "or export the line with --format onnx"
            )
        self.runtime = runtime
        self.session: InferenceSession = open_session(model_path, runtime, threads, option="--export")
        self._check_graph()

    def _check_graph(self) -> None:
        session, manifest = self.session, self.manifest
        names = {name for output in session.outputs for name in output.names}
        missing = [name for name in OUTPUT_NAMES if name not in names]
        if missing:
            raise ExportedModelError(
                f"{session.path} has no {', '.join(repr(m) for m in missing)} map output: it is not a normadd "
                "line export; export the line with 'normadd export' (for an anomalib export use --detector onnx)"
            )
        if len(session.inputs) != 1 or session.inputs[0].name != manifest.input_name:
            raise ExportedModelError(
                f"{session.path} does not take one '{manifest.input_name}' input as its manifest says: "
                "re-export the line"
            )
        shape = session.inputs[0].shape
        if len(shape) != 4 or shape[2:] != (manifest.input_size, manifest.input_size):
            raise ExportedModelError(
                f"{session.path} takes images of shape {list(shape)}, but its manifest says "
                f"{manifest.input_size}x{manifest.input_size}: the model and manifest come from different exports; "
                "re-export the line"
            )
    @property
    def input_size(self) -> int:
        """Side of the square images the graph takes."""
        return self.manifest.input_size

    @property
    def resize(self) -> str:
        """How images become the graph's square input: the exported line's ``resize``."""
        return self.manifest.resize

    @property
    def is_random(self) -> bool:
        """True when the exported backbone had random weights (maps are not meaningful)."""
        return self.manifest.random_weights

    @property
    def shares_clip_pass(self) -> bool:
        """Always True: the graph runs one CLIP pass for detector and normalities."""
        return True

    @property
    def normalities(self) -> dict[str, ExportedNormality]:
        """The normalities baked into the graph, by name."""
        return {n.name: n for n in self.manifest.normalities}

    @property
    def description(self) -> str:
        """The line, backbone, normalities and runtime in one line."""
        manifest = self.manifest
        backbone = f"{manifest.backbone} (RANDOM weights)" if manifest.random_weights else manifest.backbone
        added = ", ".join(f"{n.name}:{n.strength:g}" for n in manifest.normalities) or "none"
        return (
            f"exported APRIL-GAN line on {backbone} ({self.folder.name}, {RUNTIME_NAMES[self.runtime]}); "
            f"added normalities: {added}"
        )

    def explain(self, images: Tensor) -> AdditionResult:
        """Maps before, suppression per normality and after, for RGB images in [0, 1] at the input size.

        Raises:
            ExportedModelError: Images of another size than the export's.
        """
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, self.input_size, self.input_size):
            raise ExportedModelError(
                f"images of shape {list(images.shape)} do not fit this export (3x{self.input_size}x"
                f"{self.input_size}): load them with "
                f"normadd.images.load_image(path, {self.input_size}, '{self.resize}')"
            )
        pixels = images.detach().float().cpu().numpy()
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, pixels.shape[0], BATCH):
            chunk = np.ascontiguousarray(pixels[start : start + BATCH])
            parts.append(self.session.run({self.manifest.input_name: chunk}))
        out = {name: torch.from_numpy(np.concatenate([p[name] for p in parts])).float() for name in OUTPUT_NAMES}
        return AdditionResult(
            before=out["before"],
            before_scores=out["before_scores"],
            detector_scores=out["detector_scores"],
            suppression=out["suppression"],
            keep=out["keep"],
            after=out["after"],
            after_scores=out["after_scores"],
            names=[n.name for n in self.manifest.normalities],
        )


def normality_differences(
    exported: Iterable[ExportedNormality], active: Iterable[tuple[str, str, float]]
) -> list[str]:
    """What differs between an export's normalities and a line's active ones (name, text, strength).

    Returns:
        One phrase per difference (empty when they are the same).
    """
    mine = {n.name: (n.text, float(n.strength)) for n in exported}
    theirs = {name: (text, float(strength)) for name, text, strength in active}
    problems = []
    if only_line := sorted(set(theirs) - set(mine)):
        problems.append(f"active on the line but not in the export: {', '.join(only_line)}")
    if only_export := sorted(set(mine) - set(theirs)):
        problems.append(f"in the export but not active on the line: {', '.join(only_export)}")
    for name in sorted(set(mine) & set(theirs)):
        (text_e, strength_e), (text_l, strength_l) = mine[name], theirs[name]
        if text_e != text_l:
            problems.append(f"'{name}' is '{text_e}' in the export, '{text_l}' on the line")
        if abs(strength_e - strength_l) > 1e-9:
            problems.append(f"'{name}' has strength {strength_e:g} in the export, {strength_l:g} on the line")
    return problems


def setting_differences(manifest: LineManifest, config: LineConfig) -> list[str]:
    """What differs between an export and a line's settings.

    Compared: class, object word, detector (an export is an APRIL-GAN line), image score, backbone,
    run size, tapped layers, resize mode and, when the line names one, the weights file.
    """
    problems = []
    if manifest.class_name != config.class_name:
        problems.append(f"class '{manifest.class_name}' in the export, '{config.class_name}' on the line")
    if manifest.object_name != config.object_name:
        problems.append(f"object name {manifest.object_name!r} in the export, {config.object_name!r} on the line")
    if config.detector != "aprilgan":
        problems.append(f"the line's detector is '{config.detector}', the export is an APRIL-GAN line")
    if config.image_score != "max":
        problems.append(f"the line's image_score is '{config.image_score}', the export scores by the map's max")
    if manifest.backbone != config.backbone:
        problems.append(f"backbone '{manifest.backbone}' in the export, '{config.backbone}' on the line")
    else:
        layers = tuple(config.layers) if config.layers else None
        spec = get_backbone_spec(config.backbone, layers, config.image_size)
        if spec.image_size != manifest.input_size:
            problems.append(f"input size {manifest.input_size} in the export, {spec.image_size} on the line")
        if list(spec.layers) != list(manifest.layers):
            problems.append(f"tapped layers {manifest.layers} in the export, {list(spec.layers)} on the line")
    if manifest.resize != config.resize:
        problems.append(f"resize '{manifest.resize}' in the export, '{config.resize}' on the line")
    if config.weights is not None and file_sha256(config.weights) != manifest.weights_sha256:
        problems.append(
            f"the line's weights {config.weights} are not the file the export was made from (SHA-256 differs)"
        )
    return problems
