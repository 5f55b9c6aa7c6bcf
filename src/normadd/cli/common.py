"""Helpers every ``normadd`` command shares: the stderr console, one-line errors, progress bars."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from normadd.errors import NormaddError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

def friendly_errors(command: F) -> F:
    """Turn NormaddError (and other expected failures) into one line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except NormaddError as error:
            console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except ValueError as error:
            console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as error:
            if os.environ.get("NORMADD_DEBUG"):
                raise
            console.print(
                f"[bold red]internal error:[/] {type(error).__name__}: {error} "
                "(rerun with NORMADD_DEBUG=1 for the traceback, and please report it)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def quiet_libraries() -> None:
    """Silence third-party warnings a user cannot act on."""
    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs "randomly initialised" at WARNING


def progress_bar() -> Progress:
    """A rich progress bar on the stderr console."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def admin_notice(database: object) -> None:
    """Say on stderr that a command on the registry file acts as ``admin`` (API key scopes do not apply)."""
    console.print(
        f"[dim]acting as admin on {database}: direct database access, API key scopes do not apply[/]",
        highlight=False,
        soft_wrap=True,
    )
