"""An anomalib 2.x export (ONNX or OpenVINO IR) as a normadd detector.

What anomalib writes (``anomalib/models/components/base/export_mixin`` and its OpenVINO
inferencer): one input ``input``, float32 (B, 3, H, W), RGB in [0, 1]; the graph resizes and
normalises itself (its pre-processor is inside). Outputs by name: ``anomaly_map`` (B, 1, h, w),
normalised by the fitted thresholds, ``pred_score`` (B,), ``pred_label`` and ``pred_mask``.
Exports made with the default dynamic shapes may still have their batch fixed (PatchCore's chunked
nearest-neighbour search specialises it to 2): the detector then runs full batches of that size,
padding the last one with copies and dropping their outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from normadd.detectors.base import DetectionResult, max_scores
from normadd.detectors.inference_sessions import InferenceSession, TensorInfo, open_session
from normadd.errors import ExportedModelError

MAP_OUTPUT = "anomaly_map"
SCORE_OUTPUT = "pred_score"
DEFAULT_INPUT_SIZE = 256  # anomalib's default pre-processor size
RUNTIME_NAMES = {"onnx": "onnxruntime", "openvino": "OpenVINO (f32)"}


def _map_output(session: InferenceSession) -> TensorInfo:
    """The output holding the anomaly map: named ``anomaly_map``, else the only 4-D one."""
    for output in session.outputs:
        if MAP_OUTPUT in output.names:
            return output
    four_d = [o for o in session.outputs if len(o.shape) == 4]
    if len(four_d) == 1 and len(session.outputs) == 1:
        return four_d[0]
    names = ", ".join(o.name for o in session.outputs) or "none"
    raise ExportedModelError(
        f"{session.path} has no '{MAP_OUTPUT}' output (outputs: {names}): export a segmentation model "
        "with anomalib ('anomalib export' / model.to_onnx / model.to_openvino)"
    )


class ExportedAnomalibDetector:
    """Runs an anomalib ONNX or OpenVINO export on batches of images in [0, 1].

    Args:
        session: The loaded model (see :func:`open_session`).
        input_size: Side of the images fed to it; the export's own when its input is static,
            else anomalib's default 256.
        image_score: "max" (max of the map, the NAND protocol) or "native" (the export's ``pred_score``).
    """

    def __init__(self, session: InferenceSession, input_size: int | None = None, image_score: str = "max") -> None:
        if image_score not in ("max", "native"):
            raise ValueError(f"image_score '{image_score}' is unknown: use max or native")
        if len(session.inputs) != 1 or len(session.inputs[0].shape) != 4:
            shapes = [list(i.shape) for i in session.inputs]
            raise ExportedModelError(
                f"{session.path} takes inputs {shapes}, not one image batch (B, 3, H, W): pass an anomalib export"
            )
        self.session = session
        self.image_score = image_score
        self._input = session.inputs[0]
        self._map = _map_output(session)
        self._score = next((o for o in session.outputs if SCORE_OUTPUT in o.names), None)
        batch, _, height, width = self._input.shape
        self.batch = batch  # None: any batch size
        if height is not None and width is not None and height != width:
            raise ExportedModelError(
                f"{session.path} takes {height}x{width} images; normadd feeds square ones: re-export with a "
                "square input_size or with dynamic height and width"
            )
        static = height if height is not None else None
        if static is not None and input_size is not None and input_size != static:
            raise ExportedModelError(
                f"{session.path} was exported for {static}x{static} images, not {input_size}: drop the size "
                "option or re-export for that size"
            )
        self._input_size = static or input_size or DEFAULT_INPUT_SIZE

    @classmethod
    def from_file(cls, path: str | Path, runtime: str, image_score: str = "max") -> ExportedAnomalibDetector:
        """Load ``model.onnx`` (runtime "onnx" or "openvino") or ``model.xml`` (runtime "openvino").

        Raises:
            ExportedModelError: Missing or unreadable file, no map output, an IR without its .bin.
        """
        return cls(open_session(path, runtime), image_score=image_score)

    @property
    def input_size(self) -> int:
        """Side of the square images fed to the export."""
        return self._input_size

    @property
    def description(self) -> str:
        """The export and the runtime in one line."""
        return f"anomalib export {self.session.path.name} on {RUNTIME_NAMES[self.session.runtime]}"

    def _run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self.session.run({self._input.name: pixels})
        maps = outputs[self._map.name]
        scores = outputs.get(self._score.name) if self._score is not None else None
        return maps, scores

    def detect(self, images: Tensor) -> DetectionResult:
        """Anomaly maps (B, h, w) and scores for RGB images in [0, 1] (B, 3, H, W).

        Raises:
            ExportedModelError: The map output has an unexpected shape.
        """
        pixels = images.detach().float().cpu().numpy()
        count = pixels.shape[0]
        step = self.batch or count
        map_parts, score_parts = [], []
        for start in range(0, count, step):
            chunk = pixels[start : start + step]
            real = chunk.shape[0]
            if self.batch and real < self.batch:  # a fixed batch: pad with copies of the last image
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - real, axis=0)])
            chunk_maps, scores = self._run(np.ascontiguousarray(chunk))
            map_parts.append(chunk_maps[:real])
            if scores is not None:
                score_parts.append(np.asarray(scores).reshape(-1)[:real])
        maps = torch.from_numpy(np.concatenate(map_parts)).float()
        if maps.ndim == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if maps.ndim != 3 or maps.shape[0] != count:
            raise ExportedModelError(
                f"{self.session.path} returned maps of shape {tuple(maps.shape)} for {count} images: "
                "expected (B, 1, H, W) as anomalib exports write"
            )
        if self.image_score == "native" and score_parts:
            scores_tensor = torch.from_numpy(np.concatenate(score_parts)).float()
        else:
            scores_tensor = max_scores(maps)
        return DetectionResult(maps=maps, scores=scores_tensor)
