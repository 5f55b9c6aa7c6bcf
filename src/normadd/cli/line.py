"""``normadd line`` and ``normadd normality``: the registry on the command line.

Every command takes ``--db`` (default ``./normadd.db``); changes take ``--who`` (default
``$USER``) and ``--why``, which go to the audit log with the change. A command on the database
file acts as ``admin`` and says so; on a line with ``approval: required`` a change is proposed
and waits for ``normadd change approve`` by another person. ``normadd audit`` is in ``audit.py``.
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
from normadd.cli.common import admin_notice, friendly_errors, inert, quiet_libraries
from normadd.registry import approvals
from normadd.registry.database import redact
from normadd.registry.store import DEFAULT_DATABASE, Registry

DEFAULT_DB = str(DEFAULT_DATABASE)

DbOption = Annotated[
    str, typer.Option("--db", help="Registry: an SQLite file, or a postgresql://user@host:port/db URL.")
]
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
        coreset: opt.Coreset = None,
        model: opt.Model = None,
        db: DbOption = DEFAULT_DB,
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
            coreset=coreset,
            model=model,
        )
        admin_notice(db)
        with Registry(db) as registry:
            create_line(registry, name, config, who or default_who(), why)
            created = f"created line '{name}' ({config.class_name}, {config.backbone}) in {redact(db)}"
            out.print(inert(created), highlight=False)

    @command(line_app, "approval")
    def line_approval(
        name: Annotated[str, typer.Argument(help="Line name.")],
        mode: Annotated[str, typer.Argument(help="required (changes need a second person) or none.")],
        expires_hours: Annotated[
            float | None, typer.Option("--expires-hours", help="Hours a pending change waits before it expires.")
        ] = None,
        db: DbOption = DEFAULT_DB,
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
                propose_change(out, registry, name, "line.settings", payload, summary, who, why)
                return
            registry.update_line_settings(name, changes, who or default_who(), why)
            out.print(inert(f"line '{name}': approval {mode}"), highlight=False)

    @command(line_app, "show")
    def line_show(
        name: Annotated[str | None, typer.Argument(help="Line name; all lines when left out.")] = None,
        db: DbOption = DEFAULT_DB,
        retained_dir: opt.RetainedDir = None,
    ) -> None:
        """Show a line's settings and active normalities (or list all lines)."""
        with Registry(db, retained_dir=retained_dir) as registry:
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
            _threshold_rows(table, registry, name)
            _add_retention_rows(table, registry, name)
            out.print(table)
            _print_normalities(out, registry, name)

    # ignore_unknown_options: "-1" reaches the value check (one clear line) instead of "no such option"
    @line_app.command("set-threshold", context_settings={"ignore_unknown_options": True})
    @friendly_errors
    def line_set_threshold(
        name: Annotated[str, typer.Argument(help="Line name.")],
        value: Annotated[str, typer.Argument(help="Threshold: a part is NG when its score is above it.")],
        db: DbOption = DEFAULT_DB,
        who: WhoOption = None,
        why: WhyOption = "",
    ) -> None:
        """Set a line's threshold by hand, for its current detector (normadd calibrate finds one)."""
        from normadd.decisions.scale import score_scale
        from normadd.decisions.thresholds import check_threshold
        from normadd.registry.line_model import line_config
        from normadd.registry.store import ThresholdRecord

        threshold = check_threshold(value)
        admin_notice(db)
        with Registry(db) as registry:
            scale = score_scale(line_config(registry.line(name)))
            record = ThresholdRecord(threshold, scale, "set")
            if approvals.approval_required(registry, name):
                summary = f"set threshold {threshold:g}"
                payload = approvals.threshold_payload(record)
                propose_change(out, registry, name, "threshold.set", payload, summary, who, why)
                return
            registry.set_threshold(name, record, who or default_who(), why)
            out.print(inert(f"line '{name}': threshold {threshold:g} (NG when a score is above it)"), highlight=False)

    @command(line_app, "clear-threshold")
    def line_clear_threshold(
        name: Annotated[str, typer.Argument(help="Line name.")],
        db: DbOption = DEFAULT_DB,
        who: WhoOption = None,
        why: WhyOption = "",
    ) -> None:
        """Remove a line's threshold: its verdicts become undecided."""
        admin_notice(db)
        with Registry(db) as registry:
            if approvals.approval_required(registry, name):
                current = registry.threshold(name)
                summary = "clear threshold" + (f" (now {current.value:g})" if current is not None else " (none set)")
                propose_change(out, registry, name, "threshold.clear", {}, summary, who, why)
                return
            previous = registry.clear_threshold(name, who or default_who(), why)
            was = "none" if previous is None else f"{previous.value:g}"
            out.print(inert(f"line '{name}': threshold cleared (was {was})"), highlight=False)

    @command(normality_app, "add")
    def normality_add(
        line: Annotated[str, typer.Argument(help="Line name.")],
        text: Annotated[str, typer.Argument(help="Defect text that becomes normal, e.g. scratch.")],
        strength: Annotated[float, typer.Option(help="Suppression strength in [0, 1].")] = 1.0,
        name: Annotated[str | None, typer.Option(help="Key to remove it by (default: the text).")] = None,
        db: DbOption = DEFAULT_DB,
        who: WhoOption = None,
        why: WhyOption = "",
        device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
        staged: Annotated[
            bool, typer.Option("--staged", help="Store it without applying it: preview it, then `normality activate`.")
        ] = False,
        until: Annotated[
            str | None, typer.Option(help="Stop applying it after this time (UTC, ISO 8601, e.g. 2026-12-15T00:00Z).")
        ] = None,
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
        from normadd.registry.schedule import parse_until
        from normadd.runtime import resolve_runtime

        quiet_libraries()
        admin_notice(db)
        with Registry(db) as registry:
            ends = parse_until(until, registry.clock()) if until is not None else None
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
            state = "staged" if staged else "active"
            if approvals.approval_required(registry, line):
                record = model.prepare(text, strength, name, limits, state=state, until=ends)
                verb = "stage" if staged else "add"
                ending = f", until {record.until}" if record.until else ""
                phrases = ", ".join(record.phrases)
                summary = f"{verb} normality '{record.name}' (strength {record.strength:g}{ending}): {phrases}"
                payload = approvals.normality_payload(record)
                propose_change(out, registry, line, "normality.add", payload, summary, who, why)
                return
            added = model.add(
                registry, text, strength, who or default_who(), why, name, limits, state=state, until=ends
            )
            verb = "staged" if staged else "added"
            ending = f", until {added.until}" if added.until else ""
            out.print(
                inert(
                    f"{verb} normality '{added.name}' (strength {added.strength:g}{ending}) on line '{line}': "
                    f"{', '.join(added.phrases)}"
                ),
                highlight=False,
            )
            if staged:
                out.print(
                    inert(
                        "it does not apply yet: preview it with "
                        f"`normadd normality preview {line} {added.name} --recent N`, "
                        f"then `normadd normality activate {line} {added.name}`"
                    ),
                    highlight=False,
                )

    @command(normality_app, "activate")
    def normality_activate(
        line: Annotated[str, typer.Argument(help="Line name.")],
        name: Annotated[str, typer.Argument(help="Name of a staged normality.")],
        db: DbOption = DEFAULT_DB,
        who: WhoOption = None,
        why: WhyOption = "",
    ) -> None:
        """Make a staged normality apply from now on (audited)."""
        admin_notice(db)
        with Registry(db) as registry:
            if approvals.approval_required(registry, line):
                summary, payload = f"activate normality '{name}'", {"name": name}
                propose_change(out, registry, line, "normality.activate", payload, summary, who, why)
                return
            activated = registry.activate_normality(line, name, who or default_who(), why)
            ending = f" until {activated.until}" if activated.until else ""
            out.print(inert(f"activated normality '{activated.name}' on line '{line}'{ending}"), highlight=False)

    @command(normality_app, "preview")
    def normality_preview(
        line: Annotated[str, typer.Argument(help="Line name.")],
        text: Annotated[str, typer.Argument(help="Defect text to preview, or the name of a staged normality.")],
        recent: Annotated[int | None, typer.Option(help="Preview on the line's last N retained parts.")] = None,
        images: Annotated[
            list[Path] | None, typer.Option("--images", help="Or on these image files or folders (repeatable).")
        ] = None,
        strength: Annotated[
            float | None, typer.Option(help="Suppression strength in [0, 1] (default 1, or the staged one's).")
        ] = None,
        max_area: Annotated[
            str | None, typer.Option(help="Acceptance limit: largest region it accepts, e.g. 400 or '4 mm2'.")
        ] = None,
        max_length: Annotated[
            str | None, typer.Option(help="Acceptance limit: longest region it accepts, e.g. 30 or '2 mm'.")
        ] = None,
        region: Annotated[Path | None, typer.Option(help="PNG mask: where the normality applies.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
        db: DbOption = DEFAULT_DB,
        who: WhoOption = None,
        why: WhyOption = "",
        device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
        retained_dir: opt.RetainedDir = None,
    ) -> None:
        """Show which parts a normality would let through, before switching it on (stores nothing)."""
        from normadd.registry.line_model import LineModel
        from normadd.registry.preview import preview
        from normadd.runtime import resolve_runtime

        quiet_libraries()
        limits = {"max_area": max_area, "max_length": max_length, "region": str(region) if region else None}
        with Registry(db, retained_dir=retained_dir) as registry:
            model = LineModel.load(registry, line, resolve_runtime(device))
            report = preview(
                model,
                registry,
                text,
                who or default_who(),
                strength=strength,
                limits={k: v for k, v in limits.items() if v is not None} or None,
                recent=recent,
                images=images or None,
                why=why,
            )
        if as_json:
            parts = [part.__dict__ for part in report.parts]
            typer.echo(json.dumps({**report.summary(), "audit_id": report.audit_id, "items": parts}, indent=2))
            return
        _print_preview(out, report)

    @command(normality_app, "add-example")
    def normality_add_example(
        line: Annotated[str, typer.Argument(help="Line name.")],
        images: Annotated[list[Path], typer.Argument(help="Example images of the defect that becomes normal.")],
        mask: Annotated[list[Path], typer.Option("--mask", help="Defect mask of each image, in order.")] = [],  # noqa: B006
        strength: Annotated[float, typer.Option(help="Suppression strength in [0, 1].")] = 1.0,
        name: Annotated[str | None, typer.Option(help="Key to remove it by (default: example:<first image>).")] = None,
        db: DbOption = DEFAULT_DB,
        who: WhoOption = None,
        why: WhyOption = "",
        device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    ) -> None:
        """Make a defect type normal on a line by example images (their memory and hashes are stored)."""
        from normadd.errors import NormaddError
        from normadd.registry.line_model import LineModel
        from normadd.runtime import resolve_runtime

        if mask and len(mask) != len(images):
            raise NormaddError(f"{len(mask)} --mask for {len(images)} images: give one --mask per image, or none")
        quiet_libraries()
        with Registry(db) as registry:
            model = LineModel.load(registry, line, resolve_runtime(device))
            if approvals.approval_required(registry, line):  # the memory and hashes wait for a second person
                record = model.prepare_example(images, mask or None, strength, name)
                summary = approvals.visual_summary(record)
                payload = approvals.normality_payload(record)
                propose_change(out, registry, line, "normality.add", payload, summary, who, why)
                return
            added = model.add_example(registry, images, mask or None, strength, who or default_who(), why, name)
            out.print(
                inert(
                    f"added visual normality '{added.name}' (strength {added.strength:g}, {len(added.sources)} "
                    f"example{'s' if len(added.sources) != 1 else ''}) to line '{line}'"
                ),
                highlight=False,
            )

    @command(normality_app, "list")
    def normality_list(
        line: Annotated[str, typer.Argument(help="Line name.")],
        db: DbOption = DEFAULT_DB,
    ) -> None:
        """List a line's normalities: state (active, staged, expired) and expiry."""
        with Registry(db) as registry:
            _print_normalities(out, registry, line)

    @command(normality_app, "remove")
    def normality_remove(
        line: Annotated[str, typer.Argument(help="Line name.")],
        name: Annotated[str, typer.Argument(help="Normality name.")],
        db: DbOption = DEFAULT_DB,
        who: WhoOption = None,
        why: WhyOption = "",
    ) -> None:
        """Make a defect type anomalous again on a line."""
        admin_notice(db)
        with Registry(db) as registry:
            if approvals.approval_required(registry, line):
                summary, payload = f"remove normality '{name}'", {"name": name}
                propose_change(out, registry, line, "normality.remove", payload, summary, who, why)
                return
            removed = registry.remove_normality(line, name, who or default_who(), why)
            out.print(inert(f"removed normality '{removed.name}' from line '{line}'"), highlight=False)


def propose_change(
    out: Console,
    registry: Registry,
    line: str,
    kind: str,
    payload: dict[str, Any],
    summary: str,
    who: str | None,
    why: str,
) -> None:
    """Propose a change on an approval line (who defaults to ``$USER``) and say how another person approves it."""
    change = approvals.propose(registry, line, kind, payload, summary, who or default_who(), why)
    out.print(
        inert(
            f"line '{change.line}' needs approval: proposed change {change.id} ({change.summary}) "
            f"by {change.proposed_by}, until {change.expires_at}. "
            f"Another person approves it with: normadd change approve {change.id}"
        ),
        highlight=False,
        soft_wrap=True,
    )


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
        _add_row(table, "threshold", "- (verdicts undecided: normadd calibrate or line set-threshold)")
        return
    _add_row(table, "threshold", f"{stored.value:.6g} (NG when a score is above it)")
    how = stored.method
    if stored.details.get("false_reject") is not None:
        how += f" at {stored.details['false_reject']:g} on {stored.details.get('good_images')} good images"
    why = f" ({stored.why})" if stored.why else ""
    _add_row(table, "threshold set", f"{stored.set_at} by {stored.set_by}: {how}{why}")
    reason = stale_reason(stored.scale, score_scale(line_config(registry.line(name))))
    _add_row(table, "threshold status", f"STALE: {reason}" if reason else "valid for the line's detector")


def _add_row(table: Table, *cells: str) -> None:
    """A table row of user-derived text: control characters and rich markup shown as typed, never applied."""
    table.add_row(*(inert(cell) for cell in cells))


def _print_normalities(out: Console, registry: Registry, line: str) -> None:
    from datetime import datetime

    table = Table(title=inert(f"normalities of {line}"))
    for column in ("name", "strength", "state", "limits", "added"):
        table.add_column(column, no_wrap=column in ("strength", "added"))
    table.add_column("phrases", ratio=1)
    now = registry.clock()
    for normality in registry.normalities(line, ("active", "staged", "expired")):
        state = normality.state
        if normality.until:
            until = datetime.fromisoformat(normality.until)
            state += f"\nuntil {until:%Y-%m-%d %H:%M}Z"
            if normality.state != "expired" and until <= now:
                state += "\n(passed: expires at the next inspection)"
        limits = ", ".join(f"{k} {v}" for k, v in sorted((normality.limits or {}).items())) or "-"
        name = normality.name if normality.text == normality.name else f"{normality.name}\n({normality.text})"
        added = datetime.fromisoformat(normality.added_at)
        _add_row(
            table,
            name,
            f"{normality.strength:g}",
            state,
            limits,
            f"{normality.added_by}\n{added:%Y-%m-%d %H:%M}Z",
            ", ".join(normality.phrases)  # a visual normality has examples, named with their hashes, instead
            or ", ".join(f"{source['image']} ({str(source['sha256'])[:12]})" for source in normality.sources),
        )
    out.print(table)


def _print_preview(out: Console, report: Any) -> None:
    from normadd.decisions.verdicts import NG

    kind = "staged normality" if report.staged else "normality"
    ng_now = sum(p.verdict_before == NG for p in report.parts)
    ng_then = sum(p.verdict_after == NG for p in report.parts)
    out.print(
        inert(
            f"preview of {kind} '{report.name}' (strength {report.strength:g}) on line '{report.line}': "
            f"{len(report.parts)} parts, NG {ng_now} -> {ng_then}, {len(report.flips)} NG -> OK"
        ),
        highlight=False,
    )
    if report.threshold is None:
        out.print(inert(f"verdicts undecided: {report.reason}"), highlight=False)
    else:
        out.print(inert(f"threshold {report.threshold:.6g} (NG when a score is above it)"), highlight=False)
    shown = report.flips if report.threshold is not None else report.parts[:20]
    title = "parts it lets through" if report.threshold is not None else "scores (no verdicts without a threshold)"
    table = Table("image", "score now", "with it", "verdict", "accepted by", title=title)
    for part in shown:
        accepted = ("combined: " + " + ".join(part.accepted_by_after)) if part.combined_after else ", ".join(
            part.accepted_by_after
        )
        _add_row(
            table,
            Path(part.image).name,
            f"{part.score_before:.4f}",
            f"{part.score_after:.4f}",
            f"{part.verdict_before} -> {part.verdict_after}",
            accepted,
        )
    out.print(table)
    shares = Table("normality", "parts it lets through now", "with the candidate", title="share of each normality")
    for key in sorted(set(report.shares_before) | set(report.shares_after)):
        _add_row(shares, key, str(report.shares_before.get(key, 0)), str(report.shares_after.get(key, 0)))
    out.print(shares)
    for note in report.notes:
        out.print(inert(f"note: {note}"), highlight=False)
    for refused in report.refused:
        out.print(inert(f"refused: {refused}"), highlight=False, soft_wrap=True)
    out.print(
        f"text encoding {report.text_seconds:.2f} s, scoring {report.scoring_seconds:.2f} s; "
        f"nothing was changed (audit row {report.audit_id})",
        highlight=False,
    )


def _add_retention_rows(table: Table, registry: Registry, line: str) -> None:
    from normadd.registry.retention import RetentionStore

    store = RetentionStore.for_line(registry, line)
    usage = store.usage()
    if store.settings is None and not usage.images:
        table.add_row("retained", "off (set retain: {images: N} in the line config)")
        return
    limit = store.settings.images if store.settings else 0
    table.add_row(
        "retained",
        f"{usage.images} of {limit} images, {usage.total_bytes / 1e6:.1f} MB "
        f"(images {usage.image_bytes / 1e6:.1f} MB, features {usage.features_bytes / 1e6:.1f} MB) in {store.folder}",
    )

