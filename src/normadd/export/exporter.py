"""Write a line as one ONNX or OpenVINO graph plus its manifest (``normadd export``).

The graph is :class:`~normadd.export.graph.LineGraph`, exported with torch's dynamo exporter
(lower peak memory than the legacy one: 2.4 GB against 8 GB for ViT-L-14-336) with a dynamic batch
of 1..64 and the run size fixed. OpenVINO IR is converted from that ONNX file and saved in fp32
(``ov.save_model`` would halve the weights to fp16 by default and move the maps by ~1e-3).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from normadd.config import LineConfig
from normadd.detectors.inference_sessions import openvino_telemetry_off
from normadd.errors import NormaddError
from normadd.export.graph import INPUT_NAME, OUTPUT_NAMES, LineGraph
from normadd.export.manifest import (
    FORMATS,
    MANIFEST_NAME,
    ExportedNormality,
    LineManifest,
    file_sha256,
    normadd_version,
)
from normadd.normality.addition import NormalityAddition

MAX_BATCH = 64
SINGLE_FILE_BYTES = 1_800_000_000  # under protobuf's 2 GiB: weights stay inside the .onnx file
MODEL_STEM = "line"


@dataclass
class ExportReport:
    """What an export wrote and how long it took."""

    folder: Path
    model_path: Path
    manifest: LineManifest
    files: list[Path]
    seconds: float


def build_manifest(addition: NormalityAddition, config: LineConfig, model_file: str, fmt: str) -> LineManifest:
    """The manifest of ``addition`` built from ``config`` (hashes the weight files it names)."""
    encoder = addition.normality_detector.encoder
    projections = config.projections
    return LineManifest(
        format=fmt,
        model_file=model_file,
        input_name=INPUT_NAME,
        input_size=encoder.image_size,
        mean=list(encoder.spec.mean),
        std=list(encoder.spec.std),
        map_size=addition.normality_detector.size,
        outputs=list(OUTPUT_NAMES),
        class_name=addition.normality_detector.class_name,
        backbone=encoder.spec.name,
        layers=list(encoder.spec.layers),
        weights=str(encoder.weights.path) if encoder.weights.path else None,
        weights_sha256=file_sha256(encoder.weights.path),
        projections=projections,
        projections_sha256=file_sha256(projections),
        random_weights=encoder.is_random,
        normalities=[
            ExportedNormality(n.name, n.text, n.strength, list(n.phrases)) for n in addition.normalities.values()
        ],
        normadd_version=normadd_version(),
        threshold=config.threshold,
        threshold_scale=config.threshold_scale,
        resize=config.resize,
        object_name=config.object_name,
    )


def check_exportable(config: LineConfig) -> None:
    """Refuse, before anything is built, a line config that cannot be exported.

    Raises:
        NormaddError: A detector other than APRIL-GAN, or visual normalities (``examples``).
    """
    if config.detector != "aprilgan":
        raise NormaddError(
            f"only APRIL-GAN lines can be exported, this line's detector is '{config.detector}': "
            "export that detector with its own tool (anomalib export) and wrap it with --detector onnx|openvino"
        )
    if config.examples:
        raise NormaddError(
            f"visual normalities ({len(config.examples)} from example images) cannot be exported (only text "
            "normalities are graph constants): remove 'examples' from the line before exporting"
        )


def _export_onnx(graph: LineGraph, path: Path) -> None:
    size = graph.input_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))  # batch 2: see platform notes
    weight_bytes = sum(p.numel() * p.element_size() for p in graph.parameters())
    weight_bytes += sum(b.numel() * b.element_size() for b in graph.buffers())
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},),
            dynamo=True,
            external_data=weight_bytes > SINGLE_FILE_BYTES,
            verbose=False,
        )


def export_line(addition: NormalityAddition, config: LineConfig, out: str | Path, fmt: str) -> ExportReport:
    """Export the built line ``addition`` (from ``config``) to ``out`` as ``fmt`` ("onnx" or "openvino").

    Raises:
        NormaddError: Unknown format, a line that cannot be exported (not APRIL-GAN, visual
            normalities), a missing exporter package, or an output folder holding another export.
    """
    if fmt not in FORMATS:
        raise NormaddError(f"format '{fmt}' is unknown: choose one of {', '.join(FORMATS)}")
    started = time.perf_counter()
    graph = LineGraph.from_addition(addition)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise NormaddError(f"--out {folder} is a file: pass a folder")
    stale = [p.name for p in folder.glob(f"{MODEL_STEM}.*")] if folder.is_dir() else []
    if stale:
        raise NormaddError(f"--out {folder} already holds an export ({', '.join(sorted(stale))}): pass an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it)
    except ImportError:
        raise NormaddError("exporting needs onnxscript: pip install 'normadd[onnx]'") from None
    if fmt == "onnx":
        model_path = folder / f"{MODEL_STEM}.onnx"
        _export_onnx(graph, model_path)
    else:
        try:
            import openvino as ov
        except ImportError:
            raise NormaddError("OpenVINO is not installed: pip install 'normadd[openvino]'") from None
        model_path = folder / f"{MODEL_STEM}.xml"
        with tempfile.TemporaryDirectory(prefix="normadd-export-") as scratch:
            onnx_path = Path(scratch) / f"{MODEL_STEM}.onnx"
            _export_onnx(graph, onnx_path)
            with openvino_telemetry_off():
                ov.save_model(ov.Core().read_model(str(onnx_path)), str(model_path), compress_to_fp16=False)
    manifest = build_manifest(addition, config, model_path.name, fmt)
    manifest.write(folder)
    files = sorted(p for p in folder.iterdir() if p.name.startswith(f"{MODEL_STEM}.") or p.name == MANIFEST_NAME)
    return ExportReport(folder, model_path, manifest, files, time.perf_counter() - started)

