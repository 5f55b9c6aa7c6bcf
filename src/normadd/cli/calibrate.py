"""``normadd calibrate``: set a line's threshold from the detector's scores of defect-free images.

``normadd calibrate LINE --good DIR`` stores the threshold in the registry (audited with who and
why); ``normadd calibrate --config line.yaml --good DIR`` (or ``--class-name`` and the other shared
line options of :mod:`normadd.cli.options`, which override the file as on every line command) prints
the two YAML keys to add to the file. The threshold is the ``n − floor(α·n)``-th smallest good score (see
:mod:`normadd.decisions.thresholds`); ``--defects DIR`` adds the escape rate at it, ``--f1`` picks
the F1-optimal threshold on good + defect images instead.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from normadd.cli import options as opt
from normadd.cli.common import admin_notice, console, friendly_errors, progress_bar, quiet_libraries, say
from normadd.cli.line import DEFAULT_DB, DbOption, WhoOption, WhyOption, default_who, propose_change
from normadd.errors import NormaddError
from normadd.registry.database import redact

if TYPE_CHECKING:
    from normadd.decisions.scoring import FolderScores
    from normadd.decisions.thresholds import Calibration


def register(app: typer.Typer) -> None:
    """Add ``calibrate`` to the ``normadd`` app."""

    @app.command()
    @friendly_errors
    def calibrate(
        line: Annotated[str | None, typer.Argument(help="Registry line to store the threshold on.")] = None,
        good: Annotated[Path | None, typer.Option("--good", help="Folder of defect-free images.")] = None,
        false_reject: Annotated[
            str, typer.Option("--false-reject", help="Target false-reject rate in (0, 1).")
        ] = "0.01",
        defects: Annotated[
            Path | None, typer.Option("--defects", help="Folder of defective images: prints the escape rate.")
        ] = None,
        f1: Annotated[
            bool, typer.Option("--f1", help="Use the F1-optimal threshold on --good and --defects instead.")
        ] = False,
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
        detector_model: opt.Model = None,
        batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
        device: opt.Device = "auto",
        precision: opt.Precision = "auto",
        db: DbOption = DEFAULT_DB,
        who: WhoOption = None,
        why: WhyOption = "",
    ) -> None:
        """Calibrate a line's threshold at a target false-reject rate on defect-free images."""
        from normadd.decisions import calibrate_f1, calibrate_false_reject, check_false_reject
        from normadd.decisions.scale import score_scale
        from normadd.decisions.scoring import folder_images, score_folder
        from normadd.runtime import resolve_runtime

        line_options = {
            "--config": config_file,
            "--class-name": class_name,
            "--object-name": object_name,
            "--backbone": backbone,
            "--weights": weights,
            "--projections": projections,
            "--layers": layers,
            "--image-size": image_size,
            "--resize": resize,
            "--image-score": image_score,
            "--detector": detector,
            "--shots": shots,
            "--reference": reference,
            "--maps": maps,
            "--memory-bank": memory_bank,
            "--detector-backbone": detector_backbone,
            "--detector-weights": detector_weights,
            "--coreset": coreset,
        }
        given = [flag for flag, value in line_options.items() if value is not None]
        if line is not None and given:
            raise NormaddError(
                f"{', '.join(given)}: a registry LINE is calibrated with its stored settings; "
                "leave the line options out, or calibrate --config line.yaml (or --class-name) without LINE"
            )
        if line is None and config_file is None and class_name is None:
            raise NormaddError(
                "give a registry LINE or --config line.yaml (or --class-name), e.g. calibrate line-3"
            )
        if good is None:
            raise NormaddError("--good DIR is required: a folder of defect-free images, e.g. train/good")
        rate = check_false_reject(false_reject)
        if f1 and defects is None:
            raise NormaddError("--f1 needs --defects DIR (labelled defective images)")
        if batch_size < 1:
            raise NormaddError("--batch-size must be at least 1")
        options = [("--good", good)] + ([("--defects", defects)] if defects is not None else [])
        images = {option: folder_images(folder, option) for option, folder in options}  # before the model loads
        quiet_libraries()
        runtime = resolve_runtime(device, precision)
        if runtime.note:
            say("note:", runtime.note)
        registry = None
        if line is not None:
            from normadd.registry.line_model import LineModel, line_config
            from normadd.registry.store import Registry

            registry = Registry(db)
            with console.status("loading the line's detector"):
                model = LineModel.load(registry, line, runtime)
            addition, config = model.addition, line_config(model.line)
        else:
            from normadd.factory import build_addition

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
                model=detector_model,
            )
            config.normalities, config.examples = [], []  # calibration reads "before" scores only
            with console.status("loading the detector"):
                addition = build_addition(config, runtime)
        try:
            if addition.normality_detector.encoder.is_random:
                say("[yellow]warning:[/]", addition.normality_detector.encoder.description)
            found = {}
            with progress_bar() as progress:
                for option, paths in images.items():
                    task = progress.add_task(f"scoring {option}", total=len(paths))
                    advance = functools.partial(progress.advance, task)
                    found[option] = score_folder(addition, paths, option, batch_size, advance, config.resize)
            for scores in found.values():
                for failure in scores.failures:
                    say("[red]skipped:[/]", failure.reason)
            good_scores = found["--good"].scores
            defect_scores = found["--defects"].scores if defects is not None else []
            if f1:
                calibration = calibrate_f1(good_scores, defect_scores)
            else:
                calibration = calibrate_false_reject(good_scores, rate, defect_scores)
            _print(calibration, found.get("--defects"), defects)
            if not calibration.resolvable and calibration.method == "false-reject":
                console.print(
                    f"note: {calibration.good_count} good image(s) cannot resolve a {rate:g} false-reject rate "
                    f"(it takes at least {int(1 / rate + 0.5)}): the threshold is the highest good score",
                    highlight=False,
                )
            scale = score_scale(config)
            details = {
                "false_reject": calibration.false_reject,
                "good_images": calibration.good_count,
                "good_rejected": calibration.good_rejected,
                "defect_images": calibration.defect_count,
                "defects_accepted": calibration.defects_accepted,
                "f1": calibration.f1,
                "good": str(good.resolve()),
                "defects": str(defects.resolve()) if defects is not None else None,
            }
            if registry is not None and line is not None:
                from normadd.registry import approvals
                from normadd.registry.store import ThresholdRecord

                record = ThresholdRecord(calibration.threshold, scale, calibration.method, details)
                reason = why or f"calibrated on {good}"
                admin_notice(db)
                if approvals.approval_required(registry, line):
                    summary = f"set threshold {calibration.threshold:.6g} ({calibration.method} on {good})"
                    payload = approvals.threshold_payload(record)
                    propose_change(console, registry, line, "threshold.set", payload, summary, who, reason)
                else:
                    registry.set_threshold(line, record, who or default_who(), reason)
                    say("", f"stored threshold {calibration.threshold:.6g} on line '{line}' in {redact(db)}")
            else:
                snippet = yaml.safe_dump(
                    {"threshold": calibration.threshold, "threshold_scale": scale}, sort_keys=False
                )
                target = config_file if config_file is not None else "the line config"
                say("", f"add these keys to {target} (the scale lets normadd tell when the detector changes):")
                typer.echo(snippet, nl=False)
        finally:
            if registry is not None:
                registry.close()


def _print(calibration: Calibration, defect_scores: FolderScores | None, defects_dir: Path | None) -> None:
    """The calibration as a table on stdout."""
    title = "threshold (F1-optimal)" if calibration.method == "f1" else "threshold at the false-reject target"
    table = Table("", "value", title=title)
    table.add_row("threshold", f"{calibration.threshold:.6g}")
    if calibration.false_reject is not None:
        table.add_row("target false-reject rate", f"{calibration.false_reject:g}")
    table.add_row(
        "good images rejected",
        f"{calibration.good_rejected}/{calibration.good_count} ({100 * calibration.false_reject_rate:.2f} %)",
    )
    if calibration.defect_count:
        table.add_row(
            "defective images accepted (escapes)",
            f"{calibration.defects_accepted}/{calibration.defect_count} ({100 * (calibration.escape_rate or 0):.2f} %)",
        )
        if calibration.f1 is not None:
            table.add_row("F1 (NG = defective)", f"{calibration.f1:.4f}")
        if defect_scores is not None and defects_dir is not None:
            totals: Counter[str] = Counter()
            escaped: Counter[str] = Counter()
            for path, score in zip(defect_scores.paths, defect_scores.scores, strict=True):
                kind = path.parent.name if path.parent != defects_dir else defects_dir.name
                totals[kind] += 1
                escaped[kind] += score <= calibration.threshold
            if len(totals) > 1:
                for kind in sorted(totals):
                    table.add_row(f"  escapes: {kind}", f"{escaped[kind]}/{totals[kind]}")
    Console().print(table)
