"""``normadd serve``: run the REST service and web page of one product line with uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from normadd.cli.common import friendly_errors, quiet_libraries


def serve(
    config: Path, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", allow_broken_chain: bool = False
) -> None:
    """Load the line once and serve it until interrupted.

    Raises:
        NormaddError: Bad config, no API key, or a model that cannot be loaded.
    """
    import uvicorn

    from normadd.serve.app import create_app
    from normadd.serve.settings import ServiceConfig

    logging.getLogger("normadd").setLevel(logging.INFO)
    settings = ServiceConfig.from_yaml(config)
    settings.allow_broken_audit_chain = settings.allow_broken_audit_chain or allow_broken_chain
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
    ) -> None:
        """Serve inspections, normalities, the audit log and the web page over HTTP (needs the serve extra)."""
        quiet_libraries()
        serve(config, host, port, log_level, allow_broken_audit_chain)
