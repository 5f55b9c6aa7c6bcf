"""Helpers every ``normadd`` command shares: the stderr console, one-line errors, progress bars."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from normadd.errors import NormaddError, printable

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def inert(text: object) -> str:
    """User-derived text made safe for a rich console line: control characters escaped, markup escaped."""
    return escape(printable(str(text)))


def say(prefix: str, text: object) -> None:
    """Print one line on stderr: a rich-markup ``prefix`` (``[red]skipped:[/]``) and inert ``text``."""
    console.print(f"{prefix} {inert(text)}" if prefix else inert(text), highlight=False, soft_wrap=True)

def friendly_errors(command: F) -> F:
    """Turn NormaddError (and other expected failures) into one line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except NormaddError as error:
            say("[bold red]error:[/]", error)
            raise typer.Exit(error.exit_code) from None
        except ValueError as error:
            say("[bold red]error:[/]", error)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as error:
            if os.environ.get("NORMADD_DEBUG"):
                raise
            say(
                "[bold red]internal error:[/]",
                f"{type(error).__name__}: {error} (rerun with NORMADD_DEBUG=1 for the traceback, and please report it)",
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
    """Say on stderr that a command on the registry acts as ``admin`` (API key scopes do not apply)."""
    from normadd.registry.database import redact

    console.print(
        f"[dim]acting as admin on {redact(str(database))}: direct database access, API key scopes do not apply[/]",
        highlight=False,
        soft_wrap=True,
    )
