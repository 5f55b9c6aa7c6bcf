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

from normadd.cli.common import friendly_errors, quiet_libraries
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
        with Registry(db) as registry:
            create_line(registry, name, config, who or default_who(), why)
            out.print(f"created line '{name}' ({config.class_name}, {config.backbone}) in {db}", highlight=False)

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
            _threshold_rows(table, registry, name)
            out.print(table)
            _print_normalities(out, registry, name)

    # ignore_unknown_options: "-1" reaches the value check (one clear line) instead of "no such option"
    @line_app.command("set-threshold", context_settings={"ignore_unknown_options": True})
    @friendly_errors
    def line_set_threshold(
        name: Annotated[str, typer.Argument(help="Line name.")],
        value: Annotated[str, typer.Argument(help="Threshold: a part is NG when its score is above it.")],
        db: DbOption = DEFAULT_DATABASE,
        who: WhoOption = None,
        why: WhyOption = "",
    ) -> None:
        """Set a line's threshold by hand, for its current detector (normadd calibrate finds one)."""
        from normadd.decisions.scale import score_scale
        from normadd.decisions.thresholds import check_threshold
        from normadd.registry.line_model import line_config
        from normadd.registry.store import ThresholdRecord

        threshold = check_threshold(value)
        with Registry(db) as registry:
            scale = score_scale(line_config(registry.line(name)))
            registry.set_threshold(name, ThresholdRecord(threshold, scale, "set"), who or default_who(), why)
            out.print(f"line '{name}': threshold {threshold:g} (NG when a score is above it)", highlight=False)

    @command(line_app, "clear-threshold")
    def line_clear_threshold(
        name: Annotated[str, typer.Argument(help="Line name.")],
        db: DbOption = DEFAULT_DATABASE,
        who: WhoOption = None,
        why: WhyOption = "",
    ) -> None:
        """Remove a line's threshold: its verdicts become undecided."""
        with Registry(db) as registry:
            previous = registry.clear_threshold(name, who or default_who(), why)
            was = "none" if previous is None else f"{previous.value:g}"
            out.print(f"line '{name}': threshold cleared (was {was})", highlight=False)

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
        max_area: Annotated[
            str | None, typer.Option(help="Accept only regions up to this area: px² of the image, or e.g. '4 mm2'.")
        ] = None,
        max_length: Annotated[
            str | None, typer.Option(help="Accept only regions up to this length: px of the image, or e.g. '2 mm'.")
        ] = None,
        region: Annotated[
            Path | None, typer.Option(help="PNG mask, white where the normality applies (e.g. the label).")
        ] = None,
    ) -> None:
        """Make a defect type normal on a line (phrases and f_add are computed and stored)."""
        from normadd.registry.line_model import LineModel
        from normadd.runtime import resolve_runtime

        quiet_libraries()
        with Registry(db) as registry:
            limits: dict[str, object] = {
                "max_area": _number_or_text(max_area),
                "max_length": _number_or_text(max_length),
                "region": str(region) if region is not None else None,
            }
            if any(v is not None for v in limits.values()):  # checked before the model loads
                from normadd.decisions.policy import limits_from_mapping
                from normadd.registry.line_model import line_config

                checked = limits_from_mapping(name or text, limits)
                checked.check_units(line_config(registry.line(line)).pixel_size_mm, name or text)
            model = LineModel.load(registry, line, resolve_runtime(device))
            added = model.add(registry, text, strength, who or default_who(), why, name, limits)
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
        with Registry(db) as registry:
            removed = registry.remove_normality(line, name, who or default_who(), why)
            out.print(f"removed normality '{removed.name}' from line '{line}'", highlight=False)

    @app.command("audit")
    @friendly_errors
    def audit(
        line: Annotated[str | None, typer.Argument(help="Only this line.")] = None,
        limit: Annotated[int, typer.Option(help="At most this many rows, newest first.")] = 20,
        action: Annotated[
            str | None,
            typer.Option(help="line.create, normality.add/remove, threshold.set/clear or inspect."),
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
            table.add_row(
                str(entry.id), entry.at, entry.line, entry.action, entry.who, entry.why, _summary(entry.details)
            )
        out.print(table)


def _number_or_text(value: str | None) -> float | str | None:
    """A limit option as a number of pixels when it is one, else the text (``2 mm``)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def _threshold_rows(table: Table, registry: Registry, name: str) -> None:
    """The threshold's rows of ``line show``: value, how and by whom it was set, and whether it is usable."""
    from normadd.decisions.scale import score_scale, stale_reason
    from normadd.registry.line_model import line_config

    stored = registry.threshold(name)
    if stored is None:
        table.add_row("threshold", "- (verdicts undecided: normadd calibrate or line set-threshold)")
        return
    table.add_row("threshold", f"{stored.value:.6g} (NG when a score is above it)")
    how = stored.method
    if stored.details.get("false_reject") is not None:
        how += f" at {stored.details['false_reject']:g} on {stored.details.get('good_images')} good images"
    why = f" ({stored.why})" if stored.why else ""
    table.add_row("threshold set", f"{stored.set_at} by {stored.set_by}: {how}{why}")
    reason = stale_reason(stored.scale, score_scale(line_config(registry.line(name))))
    table.add_row("threshold status", f"STALE: {reason}" if reason else "valid for the line's detector")


def _print_normalities(out: Console, registry: Registry, line: str) -> None:
    table = Table(
        "name", "text", "strength", "limits", "added by", "added at", "phrases", title=f"active normalities of {line}"
    )
    for normality in registry.normalities(line):
        limits = ", ".join(f"{k} {v}" for k, v in sorted((normality.limits or {}).items())) or "-"
        table.add_row(
            normality.name,
            normality.text,
            f"{normality.strength:g}",
            limits,
            normality.added_by,
            normality.added_at,
            ", ".join(normality.phrases),
        )
    out.print(table)


def _summary(details: dict[str, Any]) -> str:
    if "image_sha256" in details:
        verdicts = ""
        if details.get("verdict_before"):
            verdicts = f" ({details['verdict_before']} -> {details['verdict_after']})"
        return (
            f"{details.get('filename') or details['image_sha256'][:12]}: "
            f"{details['score_before']:.4f} -> {details['score_after']:.4f}{verdicts}"
        )
    hidden = ("phrases", "scale")  # a threshold's score scale is long: `audit --json` shows it
    return ", ".join(f"{k}={v}" for k, v in details.items() if k not in hidden and v is not None)
