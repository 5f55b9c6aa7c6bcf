"""The ``normadd evaluate`` command: a thin typer layer over :func:`normadd.evaluation.evaluate`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from normadd.cli import options as opt
from normadd.cli.common import console, friendly_errors, inert, progress_bar, quiet_libraries, say
from normadd.errors import NormaddError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from normadd.evaluation.runner import EvaluationResult


class RichProgress:
    """Shows the runner's stages as rich progress bars."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def start(self, description: str, total: int) -> None:
        """Begin a new bar."""
        self.task = self.progress.add_task(description, total=total)

    def advance(self, count: int) -> None:
        """Move the current bar on."""
        if self.task is not None:
            self.progress.advance(self.task, count)


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def results_console_table(result: EvaluationResult) -> Table:
    """The protocol rows, class means and headline as a rich table."""
    table = Table(
        "class", "group", "auroc_before", "auroc_after", "paper_before", "paper_after", title="image AUROC (%)"
    )
    for row in result.rows:
        table.add_row(
            row.class_name,
            row.group,
            _cell(row.auroc_before),
            _cell(row.auroc_after),
            _cell(row.paper_before),
            _cell(row.paper_after),
        )
    paper = result.paper_headline
    table.add_section()
    table.add_row(
        "mean over classes",
        "",
        _cell(result.headline_before),
        _cell(result.headline_after),
        _cell(paper.auroc_before if paper else None),
        _cell(paper.auroc_after if paper else None),
    )
    return table


def register(app: typer.Typer) -> None:
    """Add ``normadd evaluate`` to the CLI."""

    @app.command()
    @friendly_errors
    def evaluate(
        data: Annotated[Path, typer.Option(help="Dataset root in the MVTec AD layout.", show_default=False)],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("normadd-eval"),
        classes: Annotated[str | None, typer.Option(help="Comma-separated classes (default: all).")] = None,
        groups: Annotated[
            Path | None,
            typer.Option(
                help="YAML mapping class -> group -> list of defect types (default: the MVTec AD groups), "
                "optionally with object_names: {class: object word}."
            ),
        ] = None,
        config_file: opt.ConfigFile = None,
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
        batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
        device: opt.Device = "auto",
        precision: opt.Precision = "auto",
        no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the feature cache.")] = False,
        false_reject: Annotated[
            str, typer.Option("--false-reject", help="Decisions: threshold per class at this rate on train/good.")
        ] = "0.01",
        ray: opt.Ray = False,
        ray_address: opt.RayAddress = None,
    ) -> None:
        """Evaluate added normalities with the paper's protocol; write CSVs, report.md and report.html.

        WinCLIP+ and PatchCore learn from each class's train/good images unless --reference is given.
        With --ray the image passes (test images, train/good for the thresholds) run on Ray actors;
        group texts, scoring from the records and the report stay here.
        """
        from normadd.decisions.thresholds import check_false_reject
        from normadd.evaluation.dataset import read_object_names
        from normadd.evaluation.report import write_report
        from normadd.evaluation.runner import EvaluationSettings, evaluate
        from normadd.runtime import resolve_runtime

        rate = check_false_reject(false_reject)
        quiet_libraries()
        class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        if object_name is not None and (class_list is None or len(class_list) != 1):
            raise NormaddError(
                "--object-name names the object of one class: pass --classes with one class, "
                "or map each class in the --groups YAML (object_names: {mtd: magnetic tile})"
            )
        # The class name is a placeholder: each evaluated class gets its own.
        placeholder = None if config_file is not None else "evaluation"
        line = opt.line_from_options(
            config_file,
            placeholder,
            backbone=backbone,
            weights=weights,
            projections=projections,
            layers=layers,
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
        if line.memory_bank is not None and (class_list is None or len(class_list) != 1):
            raise NormaddError(
                "--memory-bank holds one class's PatchCore memory: pass --classes with one class, "
                "or leave it out to fit each class on its train/good images"
            )
        object_names = read_object_names(groups)
        if object_name is not None and class_list is not None:
            object_names[class_list[0]] = object_name
        runtime = resolve_runtime(device, precision)
        if runtime.note:
            say("note:", runtime.note)
        settings = EvaluationSettings(
            data=data,
            classes=class_list,
            groups_file=groups,
            detector=line.detector,
            line=line,
            object_names=object_names,
            batch_size=batch_size,
            use_cache=not no_cache,
            runtime=runtime,
            false_reject=rate,
        )
        target = opt.ray_target(ray, ray_address)
        with contextlib.ExitStack() as stack:
            image_pass = None
            if target is not None:
                from normadd.batch.ray_pipeline import RayImagePass, connect

                session = stack.enter_context(connect(target or None))
                say(
                    "note:",
                    f"image passes on {session.where} ({session.actors} actor(s) at most; "
                    f"{session.cpus:g} CPUs, {session.gpus:g} GPUs)",
                )
                image_pass = RayImagePass(session, device, precision)
            with progress_bar() as progress:
                result = evaluate(
                    settings,
                    progress=RichProgress(progress),
                    on_note=lambda line: progress.console.print(
                        f"note: {inert(line)}", highlight=False, soft_wrap=True
                    ),
                    image_pass=image_pass,
                )
        if result.random_weights:
            console.print(
                "[yellow]warning:[/] RANDOM weights: the numbers test the pipeline, not the method", highlight=False
            )
        stdout = Console()
        if not stdout.is_terminal:
            stdout = Console(width=120)  # a pipe or file gets the whole table, not an 80-column squeeze
        stdout.print(results_console_table(result))
        cost = result.cost
        for evaluation in result.classes:
            for d in evaluation.decisions:
                stdout.print(
                    f"{d.class_name} +{d.added_group} at threshold {d.threshold:.4g}: "
                    f"{d.added_group} accepted {d.group_accepted_before}/{d.group_images} -> "
                    f"{d.group_accepted_after}/{d.group_images}; other defects accepted "
                    f"{d.other_accepted_before}/{d.other_images} -> {d.other_accepted_after}/{d.other_images}; "
                    f"good rejected {d.good_rejected_before}/{d.good_images} -> "
                    f"{d.good_rejected_after}/{d.good_images}",
                    highlight=False,
                    soft_wrap=True,
                )
        calibration = f" (+{cost.calibration_images} train/good for the thresholds)" if cost.calibration_images else ""
        console.print(
            f"{cost.images} images{calibration}: {cost.detector_passes} detector passes, "
            f"{cost.clip_passes} CLIP passes, "
            f"{cost.group_texts} group texts, cache {cost.cache_hits} hits / {cost.cache_misses} misses, "
            f"{cost.seconds:.1f} s",
            highlight=False,
        )
        written = write_report(result, out, data)
        console.print(f"wrote {', '.join(p.name for p in written.values())} to {out}", highlight=False)
