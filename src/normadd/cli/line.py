"""``normadd line`` and ``normadd normality``: the registry on the command line.

Every command takes ``--db`` (default ``./normadd.db``); changes take ``--who`` (default
``$USER``) and ``--why``, which go to the audit log with the change. A command on the database
file acts as ``admin`` and says so; on a line with ``approval: required`` a change is proposed
and waits for ``normadd change approve`` by another person. ``normadd audit`` is in ``audit.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from normadd.cli.common import admin_notice, friendly_errors, quiet_libraries
from normadd.registry import approvals
from normadd.registry.store import DEFAULT_DATABASE, Registry

DbOption = Annotated[Path, typer.Option("--db", help="Registry database file.")]
WhoOption = Annotated[str | None, typer.Option("--who", help="Who makes the change (default: $USER).")]
WhyOption = Annotated[str, typer.Option("--why", help="Why, for the audit log.")]


def default_who() -> str:
    """The person running the command: ``$USER`` (or ``$USERNAME``), else ``unknown``."""
    return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


def register(app: typer.Typer) -> None:
    """Add the ``line`` and ``normality`` commands to the ``normadd`` app."""
    out = Console()
    line_app = typer.Typer(help="Product lines in the registry.", no_args_is_help=True)
    normality_app = typer.Typer(help="Active normalities of a product line.", no_args_is_help=True)
    app.add_typer(line_app, name="line")
    app.add_typer(normality_app, name="normality")

    def command(group: typer.Typer, name: str) -> Callable[[Callable[..., Any]], Any]:
        def decorate(function: Callable[..., Any]) -> Any:
            return group.command(name)(friendly_errors(function))

        return decorate

    @command(line_app, "create")
    def line_create(
        name: Annotated[str, typer.Argument(help="Line name, e.g. bottle-line-3.")],
        config_file: Annotated[Path | None, typer.Option("--config", help="Line YAML (class_name, backbone…).")] = None,
        class_name: Annotated[str | None, typer.Option("--class-name", "-c", help="Product class.")] = None,
        backbone: Annotated[str | None, typer.Option(help="ViT-L-14-336 (default) or tiny-random.")] = None,
        weights: Annotated[Path | None, typer.Option(help="open_clip weights file.")] = None,
        projections: Annotated[Path | None, typer.Option(help="APRIL-GAN projections checkpoint.")] = None,
        db: DbOption = DEFAULT_DATABASE,
        who: WhoOption = None,
        why: WhyOption = "",
    ) -> None:
        """Create a product line (normalities in its config become active)."""
        from normadd.config import config_from_options
        from normadd.registry.line_model import create_line

        quiet_libraries()
        config = config_from_options(config_file, class_name, backbone, weights, projections)
        admin_notice(db)
        with Registry(db) as registry:
            create_line(registry, name, config, who or default_who(), why)
            out.print(f"created line '{name}' ({config.class_name}, {config.backbone}) in {db}", highlight=False)

    @command(line_app, "approval")
    def line_approval(
        name: Annotated[str, typer.Argument(help="Line name.")],
        mode: Annotated[str, typer.Argument(help="required (changes need a second person) or none.")],
        expires_hours: Annotated[
            float | None, typer.Option("--expires-hours", help="Hours a pending change waits before it expires.")
        ] = None,
        db: DbOption = DEFAULT_DATABASE,
        who: WhoOption = None,
        why: WhyOption = "",
    ) -> None:
        """Require a second person's approval for the line's changes, or stop requiring it (that needs approval)."""
        from normadd.config import LineConfig

        if mode not in approvals.APPROVAL_MODES:
            raise ValueError(f"approval mode '{mode}' is unknown: use required or none")
        changes: dict[str, Any] = {"approval": mode}
        if expires_hours is not None:
            LineConfig(class_name="check", approval=mode, approval_expires_hours=expires_hours)  # validates
            changes["approval_expires_hours"] = expires_hours
        admin_notice(db)
        with Registry(db) as registry:
            if approvals.approval_required(registry, name):
                summary = "set " + ", ".join(f"{key}={value}" for key, value in changes.items())
                payload = {"settings": changes}
                _print_proposed(
                    out, approvals.propose(registry, name, "line.settings", payload, summary, who or default_who(), why)
                )
                return
            registry.update_line_settings(name, changes, who or default_who(), why)
            out.print(f"line '{name}': approval {mode}", highlight=False)

    @command(line_app, "show")
    def line_show(
        name: Annotated[str | None, typer.Argument(help="Line name; all lines when left out.")] = None,
        db: DbOption = DEFAULT_DATABASE,
    ) -> None:
        """Show a line's settings and active normalities (or list all lines)."""
        with Registry(db) as registry:
            if name is None:
                table = Table("line", "class", "detector", "backbone", "normalities", "created")
                for line in registry.lines():
                    active = ", ".join(n.name for n in registry.normalities(line.name)) or "-"
                    table.add_row(line.name, line.class_name, line.detector, line.backbone, active, line.created_at)
                out.print(table)
                return
            line = registry.line(name)
            table = Table("setting", "value", title=f"line {name}")
            for key in ("class_name", "detector", "backbone", "weights", "projections", "layers", "phrase_generator"):
                value = getattr(line, key)
                table.add_row(key, "-" if value is None else str(value))
            for key, value in sorted(line.settings.items()):
                table.add_row(key, str(value))
            table.add_row("created_at", line.created_at)
            out.print(table)
            _print_normalities(out, registry, name)

    @command(normality_app, "add")
    def normality_add(
        line: Annotated[str, typer.Argument(help="Line name.")],
        text: Annotated[str, typer.Argument(help="Defect text that becomes normal, e.g. scratch.")],
        strength: Annotated[float, typer.Option(help="Suppression strength in [0, 1].")] = 1.0,
        name: Annotated[str | None, typer.Option(help="Key to remove it by (default: the text).")] = None,
        db: DbOption = DEFAULT_DATABASE,
        who: WhoOption = None,
        why: WhyOption = "",
        device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    ) -> None:
        """Make a defect type normal on a line (phrases and f_add are computed and stored)."""
        from normadd.registry.line_model import LineModel
        from normadd.runtime import resolve_runtime

        quiet_libraries()
        admin_notice(db)
        with Registry(db) as registry:
            model = LineModel.load(registry, line, resolve_runtime(device))
            if approvals.approval_required(registry, line):
                record = model.prepare(text, strength, name)
                summary = f"add normality '{record.name}' (strength {record.strength:g}): {', '.join(record.phrases)}"
                payload = approvals.normality_payload(record)
                change = approvals.propose(registry, line, "normality.add", payload, summary, who or default_who(), why)
                _print_proposed(out, change)
                return
            added = model.add(registry, text, strength, who or default_who(), why, name)
            out.print(
                f"added normality '{added.name}' (strength {added.strength:g}) to line '{line}': "
                f"{', '.join(added.phrases)}",
                highlight=False,
            )

    @command(normality_app, "list")
    def normality_list(
        line: Annotated[str, typer.Argument(help="Line name.")],
        db: DbOption = DEFAULT_DATABASE,
    ) -> None:
        """List a line's active normalities."""
        with Registry(db) as registry:
            _print_normalities(out, registry, line)

    @command(normality_app, "remove")
    def normality_remove(
        line: Annotated[str, typer.Argument(help="Line name.")],
        name: Annotated[str, typer.Argument(help="Normality name.")],
        db: DbOption = DEFAULT_DATABASE,
        who: WhoOption = None,
        why: WhyOption = "",
    ) -> None:
        """Make a defect type anomalous again on a line."""
        admin_notice(db)
        with Registry(db) as registry:
            if approvals.approval_required(registry, line):
                summary, payload = f"remove normality '{name}'", {"name": name}
                change = approvals.propose(
                    registry, line, "normality.remove", payload, summary, who or default_who(), why
                )
                _print_proposed(out, change)
                return
            removed = registry.remove_normality(line, name, who or default_who(), why)
            out.print(f"removed normality '{removed.name}' from line '{line}'", highlight=False)


def _print_proposed(out: Console, change: approvals.PendingChange) -> None:
    out.print(
        f"line '{change.line}' needs approval: proposed change {change.id} ({change.summary}) by {change.proposed_by}, "
        f"until {change.expires_at}. Another person approves it with: normadd change approve {change.id}",
        highlight=False,
        soft_wrap=True,
    )


def _print_normalities(out: Console, registry: Registry, line: str) -> None:
    table = Table("name", "text", "strength", "added by", "added at", "phrases", title=f"active normalities of {line}")
    for normality in registry.normalities(line):
        table.add_row(
            normality.name,
            normality.text,
            f"{normality.strength:g}",
            normality.added_by,
            normality.added_at,
            ", ".join(normality.phrases),
        )
    out.print(table)
