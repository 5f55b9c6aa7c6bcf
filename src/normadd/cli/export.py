"""``normadd export``: a line as one ONNX or OpenVINO graph plus its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from normadd.cli.common import console, friendly_errors, quiet_libraries
from normadd.errors import NormaddError


def run_export(
    config_file: Path | None,
    class_name: str | None,
    add: list[str],
    backbone: str | None,
    weights: Path | None,
    projections: Path | None,
    fmt: str,
    out: Path,
) -> None:
    """Build the line on the CPU in fp32, export it and print what was written."""
    from normadd.config import NormalitySetting, config_from_options
    from normadd.export.exporter import check_exportable, export_line
    from normadd.export.manifest import FORMATS
    from normadd.factory import build_addition
    from normadd.runtime import resolve_runtime

    quiet_libraries()
    if fmt not in FORMATS:
        raise NormaddError(f"--format '{fmt}' is unknown: choose one of {', '.join(FORMATS)}")
    config = config_from_options(config_file, class_name, backbone, weights, projections)
    config.normalities += [NormalitySetting.parse(spec) for spec in add]
    check_exportable(config)
    with console.status("loading the line and encoding texts"):
        addition = build_addition(config, resolve_runtime("cpu", "fp32"))
    if addition.normality_detector.encoder.is_random:
        console.print(f"[yellow]warning:[/] {addition.normality_detector.encoder.description}", highlight=False)
    with console.status(f"exporting to {fmt}"):
        report = export_line(addition, config, out, fmt)
    added = ", ".join(f"{n.name}:{n.strength:g}" for n in report.manifest.normalities) or "none"
    console.print(
        f"exported {report.manifest.backbone} line '{report.manifest.class_name}' (normalities: {added}) "
        f"as {fmt} in {report.seconds:.1f} s",
        highlight=False,
    )
    for path in report.files:
        typer.echo(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to the ``normadd`` app."""

    @app.command("export")
    @friendly_errors
    def export_command(
        out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the model files and manifest.json.")],
        fmt: Annotated[str, typer.Option("--format", "-f", help="onnx or openvino.")] = "onnx",
        config_file: Annotated[Path | None, typer.Option("--config", help="Product line YAML file.")] = None,
        class_name: Annotated[
            str | None, typer.Option("--class-name", "-c", help="Product class, e.g. bottle.")
        ] = None,
        add: Annotated[list[str], typer.Option("--add", "-a", help="Normality text, optionally 'text:strength'.")] = [],  # noqa: B006
        backbone: Annotated[str | None, typer.Option(help="ViT-L-14-336 (default) or tiny-random.")] = None,
        weights: Annotated[Path | None, typer.Option(help="open_clip weights (.pt/.bin/.safetensors).")] = None,
        projections: Annotated[Path | None, typer.Option(help="APRIL-GAN projections checkpoint.")] = None,
    ) -> None:
        """Export a line (APRIL-GAN, its text normalities as constants) as one ONNX or OpenVINO graph."""
        run_export(config_file, class_name, add, backbone, weights, projections, fmt, out)
