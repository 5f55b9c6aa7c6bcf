"""The ``normadd`` command line: a thin typer app, one module per command group.

Every user error is one line on stderr and exit code 2, never a traceback
(``NORMADD_DEBUG=1`` shows the traceback of an unexpected error). Shared helpers live in
:mod:`normadd.cli.common`; each command group registers itself with ``register(app)``.
"""

from __future__ import annotations

import typer

from normadd.cli import audit, authority, calibrate, evaluate, export, inspect, line, serve, train

app = typer.Typer(
    name="normadd",
    help="Add a normality to a deployed visual anomaly detector by text (NAND).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _group in (inspect, train, line, audit, authority, serve, evaluate, calibrate, export):
    _group.register(app)


def main() -> None:
    """Entry point for ``python -m normadd``."""
    app(prog_name="normadd")


__all__ = ["app", "main"]
