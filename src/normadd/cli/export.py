"""``normadd export``: a line as one ONNX or OpenVINO graph plus its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from normadd.cli import options as opt
from normadd.cli.common import console, friendly_errors, quiet_libraries, say
from normadd.errors import NormaddError

if TYPE_CHECKING:
    from normadd.config import LineConfig


def run_export(config: LineConfig, add: list[str], fmt: str, out: Path) -> None:
    """Build the line on the CPU in fp32, export it and print what was written."""
    from normadd.config import NormalitySetting
    from normadd.export.exporter import check_exportable, export_line
    from normadd.export.manifest import FORMATS
    from normadd.factory import build_addition
    from normadd.runtime import resolve_runtime

    quiet_libraries()
    if fmt not in FORMATS:
        raise NormaddError(f"--format '{fmt}' is unknown: choose one of {', '.join(FORMATS)}")
    config.normalities += [NormalitySetting.parse(spec) for spec in add]
    check_exportable(config)
    with console.status("loading the line and encoding texts"):
        addition = build_addition(config, resolve_runtime("cpu", "fp32"))
    if addition.normality_detector.encoder.is_random:
        say("[yellow]warning:[/]", addition.normality_detector.encoder.description)
    with console.status(f"exporting to {fmt}"):
        report = export_line(addition, config, out, fmt)
    added = ", ".join(f"{n.name}:{n.strength:g}" for n in report.manifest.normalities) or "none"
    say(
        "",
        f"exported {report.manifest.backbone} line '{report.manifest.class_name}' (normalities: {added}, "
        f"resize {report.manifest.resize}) as {fmt} in {report.seconds:.1f} s",
    )
    for path in report.files:
        say("", f"{path}  {path.stat().st_size / 2**20:.1f} MiB")


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to the ``normadd`` app."""

    @app.command("export")
    @friendly_errors
    def export_command(
        out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the model files and manifest.json.")],
        fmt: Annotated[str, typer.Option("--format", "-f", help="onnx or openvino.")] = "onnx",
        config_file: opt.ConfigFile = None,
        class_name: opt.ClassName = None,
        add: Annotated[list[str], typer.Option("--add", "-a", help="Normality text, optionally 'text:strength'.")] = [],  # noqa: B006
        object_name: opt.ObjectName = None,
        backbone: opt.Backbone = None,
        weights: opt.Weights = None,
        projections: opt.Projections = None,
        layers: opt.Layers = None,
        image_size: opt.ImageSize = None,
        resize: opt.Resize = None,
        image_score: opt.ImageScore = None,
        detector: opt.Detector = None,
        model: opt.Model = None,
        shots: opt.Shots = None,
        reference: opt.Reference = None,
        maps: opt.Maps = None,
        memory_bank: opt.MemoryBank = None,
        detector_backbone: opt.DetectorBackbone = None,
        detector_weights: opt.DetectorWeights = None,
        coreset: opt.Coreset = None,
    ) -> None:
        """Export a line (APRIL-GAN, its text normalities as constants) as one ONNX or OpenVINO graph.

        The shared line options mean what they mean for inspect; the manifest records the line's
        resize (squash or letterbox), and inspect/serve decode images with it when they run the export.
        """
        config = opt.line_from_options(
            config_file,
            class_name,
            backbone=backbone,
            weights=weights,
            projections=projections,
            layers=layers,
            object_name=object_name,
            image_size=image_size,
            resize=resize,
            image_score=image_score,
            detector=detector,
            shots=shots,
            reference=reference,
            maps=maps,
            memory_bank=memory_bank,
            detector_backbone=detector_backbone,
            detector_weights=detector_weights,
            model=model,
            coreset=coreset,
        )
        run_export(config, add, fmt, out)
