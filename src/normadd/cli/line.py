"""``normadd line``, ``normadd normality`` and ``normadd audit``: the registry on the command line.

Every command takes ``--db`` (default ``./normadd.db``); changes take ``--who`` (default
``$USER``) and ``--why``, which go to the audit log with the change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from normadd.cli import options as opt
from normadd.cli.common import friendly_errors, inert, quiet_libraries
from normadd.registry.store import DEFAULT_DATABASE, Registry

DbOption = Annotated[Path, typer.Option("--db", help="Registry database file.")]
WhoOption = Annotated[str | None, typer.Option("--who", help="Who makes the change (default: $USER).")]
WhyOption = Annotated[str, typer.Option("--why", help="Why, for the audit log.")]


def default_who() -> str:
    """The person running the command: ``$USER`` (or ``$USERNAME``), else ``unknown``."""
    return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


def register(app: typer.Typer) -> None:
    """Add the ``line``, ``normality`` and ``audit`` commands to the ``normadd`` app."""
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
        config_file: opt.ConfigFile = None,
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
        shots: opt.Shots = None,
        reference: opt.Reference = None,
        maps: opt.Maps = None,
        memory_bank: opt.MemoryBank = None,
        detector_backbone: opt.DetectorBackbone = None,
        detector_weights: opt.DetectorWeights = None,
        db: DbOption = DEFAULT_DATABASE,
        who: WhoOption = None,
        why: WhyOption = "",
    ) -> None:
        """Create a product line (normalities in its config become active)."""
        from normadd.registry.line_model import create_line

        quiet_libraries()
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
        )
        with Registry(db) as registry:
            create_line(registry, name, config, who or default_who(), why)
            out.print(inert(f"created line '{name}' ({config.class_name}, {config.backbone}) in {db}"), highlight=False)

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
                    _add_row(table, line.name, line.class_name, line.detector, line.backbone, active, line.created_at)
                out.print(table)
                return
            line = registry.line(name)
            table = Table("setting", "value", title=f"line {name}")
            for key in ("class_name", "detector", "backbone", "weights", "projections", "layers", "phrase_generator"):
                value = getattr(line, key)
                _add_row(table, key, "-" if value is None else str(value))
            for key, value in sorted(line.settings.items()):
                _add_row(table, key, str(value))
            _add_row(table, "created_at", line.created_at)
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
        with Registry(db) as registry:
            model = LineModel.load(registry, line, resolve_runtime(device))
            added = model.add(registry, text, strength, who or default_who(), why, name)
            out.print(
                inert(
                    f"added normality '{added.name}' (strength {added.strength:g}) to line '{line}': "
                    f"{', '.join(added.phrases)}"
                ),
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
        with Registry(db) as registry:
            removed = registry.remove_normality(line, name, who or default_who(), why)
            out.print(inert(f"removed normality '{removed.name}' from line '{line}'"), highlight=False)

    @app.command("audit")
    @friendly_errors
    def audit(
        line: Annotated[str | None, typer.Argument(help="Only this line.")] = None,
        limit: Annotated[int, typer.Option(help="At most this many rows, newest first.")] = 20,
        action: Annotated[
            str | None, typer.Option(help="line.create, normality.add, normality.remove or inspect.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
        db: DbOption = DEFAULT_DATABASE,
    ) -> None:
        """Show the audit log: who changed what, when and why, and every inspection."""
        with Registry(db) as registry:
            if line is not None:
                registry.line(line)
            entries = registry.audit(line, limit, action)
        if as_json:
            for entry in entries:
                typer.echo(json.dumps(entry.__dict__, sort_keys=True))
            return
        table = Table("id", "at", "line", "action", "who", "why", "details")
        for entry in entries:
            _add_row(table,
                str(entry.id), entry.at, entry.line, entry.action, entry.who, entry.why, _summary(entry.details)
            )
        out.print(table)


def _add_row(table: Table, *cells: str) -> None:
    """A table row of user-derived text: control characters and rich markup shown as typed, never applied."""
    table.add_row(*(inert(cell) for cell in cells))


def _print_normalities(out: Console, registry: Registry, line: str) -> None:
    table = Table("name", "text", "strength", "added by", "added at", "phrases", title=f"active normalities of {line}")
    for normality in registry.normalities(line):
        _add_row(table,
            normality.name,
            normality.text,
            f"{normality.strength:g}",
            normality.added_by,
            normality.added_at,
            ", ".join(normality.phrases),
        )
    out.print(table)


def _summary(details: dict[str, Any]) -> str:
    if "image_sha256" in details:
        return (
            f"{details.get('filename') or details['image_sha256'][:12]}: "
            f"{details['score_before']:.4f} -> {details['score_after']:.4f}"
        )
    return ", ".join(f"{k}={v}" for k, v in details.items() if k != "phrases" and v is not None)
