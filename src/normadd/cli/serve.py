"""``normadd serve``: run the REST service and web page of one product line with uvicorn."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Annotated

import typer

from normadd.cli.common import friendly_errors, quiet_libraries


def serve(
    config: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    runtime: str | None = None,
    export: Path | None = None,
) -> None:
    """Load the line once and serve it until interrupted.

    ``runtime`` and ``export`` override the config's ``service.runtime`` and ``service.export``.

    Raises:
        NormaddError: Bad config, no API key, or a model that cannot be loaded.
    """
    import uvicorn

    from normadd.serve.app import create_app
    from normadd.serve.settings import ServiceConfig

    logging.getLogger("normadd").setLevel(logging.INFO)
    settings = ServiceConfig.from_yaml(config)
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
        runtime: Annotated[
            str | None,
            typer.Option(help="auto (default: torch, or OpenVINO with --export), torch, onnx or openvino."),
        ] = None,
        export: Annotated[
            Path | None, typer.Option(help="Folder from 'normadd export' of this line (with --runtime onnx|openvino).")
        ] = None,
    ) -> None:
        """Serve inspections, normalities, the audit log and the web page over HTTP (needs the serve extra)."""
        quiet_libraries()
        serve(config, host, port, log_level, runtime, export)
