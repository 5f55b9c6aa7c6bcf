"""``normadd serve``: run the REST service and web page of the registry's product lines with uvicorn."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from normadd.cli import options as opt
from normadd.cli.common import friendly_errors, quiet_libraries

if TYPE_CHECKING:
    from normadd.serve.settings import ServiceConfig


def serve(
    config: Path | ServiceConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    allow_broken_chain: bool = False,
    runtime: str | None = None,
    export: Path | None = None,
    lines: str | None = None,
    retained_dir: Path | None = None,
) -> None:
    """Load the served lines once and serve them until interrupted.

    ``runtime``, ``export``, ``lines`` (``a,b``) and ``retained_dir`` override the config's
    ``service.runtime``, ``service.export``, ``service.lines`` and ``service.retained_dir``.

    Raises:
        NormaddError: Bad config, no API key, or a model that cannot be loaded.
    """
    import uvicorn

    from normadd.serve.app import create_app
    from normadd.serve.settings import ServiceConfig, parse_lines

    logging.getLogger("normadd").setLevel(logging.INFO)
    settings = config if isinstance(config, ServiceConfig) else ServiceConfig.from_yaml(config)
    if lines is not None:
        settings.lines = parse_lines(lines)
    if retained_dir is not None:
        settings.retained_dir = retained_dir
    settings.allow_broken_audit_chain = settings.allow_broken_audit_chain or allow_broken_chain
    if runtime is not None or export is not None:
        # A config without an export resolved its runtime to torch; a new --export starts from auto again.
        keep = settings.runtime if settings.export is not None else "auto"
        settings = dataclasses.replace(
            settings, runtime=runtime or keep, export=export if export is not None else settings.export
        )
    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the ``normadd`` app."""

    @app.command("serve")
    @friendly_errors
    def serve_command(
        config: Annotated[Path, typer.Option("--config", help="Line YAML with database and service settings.")],
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
        allow_broken_audit_chain: Annotated[
            bool, typer.Option(help="Start even if the audit log's hash chain is broken (the finding is audited).")
        ] = False,
        class_name: opt.ClassName = None,
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
        runtime: opt.Runtime = None,
        export: opt.Export = None,
        lines: Annotated[
            str | None,
            typer.Option(
                "--lines",
                help="Serve only these lines of the registry, e.g. bottle-1,cap-2 (default: every line; "
                "the config's service.lines).",
            ),
        ] = None,
        retained_dir: opt.RetainedDir = None,
    ) -> None:
        """Serve inspections, normalities, the audit log and the web page of the registry's lines over HTTP.

        One process serves every line of the registry (or --lines); lines on the same backbone
        share one encoder in memory. The line options override the --config file's line settings,
        as for inspect; they seed the configured line when the registry does not hold it yet
        (afterwards the registry is the truth). A --config with no line keys (only database and
        service) serves the registry's lines and creates none. Needs the serve extra.
        """
        from normadd.config import LineConfig
        from normadd.errors import NormaddError
        from normadd.serve.settings import ServiceConfig

        quiet_libraries()
        settings = ServiceConfig.from_yaml(config)
        line_options = {
            "class_name": class_name,
            "backbone": backbone,
            "weights": weights,
            "projections": projections,
            "layers": opt.parse_layers(layers),
            "object_name": object_name,
            "image_size": image_size,
            "resize": resize,
            "image_score": image_score,
            "detector": detector,
            "shots": shots,
            "reference": reference,
            "maps": maps,
            "memory_bank": memory_bank,
            "detector_backbone": detector_backbone,
            "detector_weights": detector_weights,
            "coreset": coreset,
            "model": model,
        }
        if settings.line_config is None and any(value is not None for value in line_options.values()):
            if class_name is None:  # the options would change a line the config does not have
                raise NormaddError(
                    f"line options need a line: {config} has no line keys; add --class-name (or class_name: "
                    "in the config) to create one, or drop the line options to serve the registry's lines"
                )
            settings.line_config = LineConfig(class_name=class_name)
            settings.line = settings.line or class_name
        if settings.line_config is not None:
            settings.line_config = opt.apply_line_options(settings.line_config, **line_options)
        serve(settings, host, port, log_level, allow_broken_audit_chain, runtime, export, lines, retained_dir)
