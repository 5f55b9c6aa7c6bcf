"""``normadd train-projections``: the training stage's command, registered on the main typer app."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from normadd.cli.common import console, friendly_errors, quiet_libraries
from normadd.errors import NormaddError


def train_projections(
    data: Annotated[Path, typer.Option("--data", help="Dataset in the MVTec AD layout (root or one class folder).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.pth).")],
    classes: Annotated[str | None, typer.Option(help="Comma-separated class folders; all when left out.")] = None,
    backbone: Annotated[str, typer.Option(help="ViT-L-14-336 (default) or tiny-random.")] = "ViT-L-14-336",
    weights: Annotated[Path | None, typer.Option(help="open_clip weights (.pt/.bin/.safetensors).")] = None,
    layers: Annotated[str | None, typer.Option(help="Tapped blocks, e.g. 6,12,18,24.")] = None,
    epochs: Annotated[int, typer.Option(help="Total epochs (APRIL-GAN: 3 on MVTec AD, 15 on VisA).")] = 3,
    batch_size: Annotated[int, typer.Option(help="Images per step (APRIL-GAN: 64 on a GPU).")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, order and mosaics.")] = 111,
    mosaic_rate: Annotated[float, typer.Option(help="Chance of a 2x2 mosaic per sample (APRIL-GAN: 0.2).")] = 0.2,
    resume: Annotated[Path | None, typer.Option(help="Continue a run from its checkpoint.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Train APRIL-GAN's per-layer projections on images with defect masks (CLIP stays frozen)."""
    from normadd.backbone.clip_encoder import ClipEncoder
    from normadd.runtime import resolve_runtime
    from normadd.training.dataset import MaskedImageDataset
    from normadd.training.trainer import ProjectionTrainer, StepReport, TrainingSettings

    quiet_libraries()
    try:
        tapped = tuple(int(x) for x in layers.split(",") if x.strip()) if layers else None
    except ValueError:
        raise NormaddError(f"--layers '{layers}' must be comma-separated block numbers, e.g. 6,12,18,24") from None
    settings = TrainingSettings(
        epochs=epochs, batch_size=batch_size, learning_rate=lr, seed=seed, mosaic_rate=mosaic_rate
    )
    runtime = resolve_runtime(device, "fp32" if device == "cpu" else "auto")
    if runtime.note:
        console.print(f"note: {runtime.note}")
    encoder = ClipEncoder.from_name(backbone, weights=weights, layers=tapped, runtime=runtime)
    if encoder.is_random:
        console.print(f"[yellow]warning:[/] {encoder.description}", highlight=False)
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    with console.status("checking images and masks"):
        dataset = MaskedImageDataset.from_mvtec(data, encoder.image_size, class_list)
    with_masks = sum(sample.mask is not None for sample in dataset.samples)
    console.print(
        f"{len(dataset)} images ({with_masks} with masks) of {', '.join(dataset.class_names)} at "
        f"{encoder.image_size} px on {encoder.spec.name}",
        highlight=False,
    )
    trainer = ProjectionTrainer(encoder, settings)
    steps = math.ceil(len(dataset) / batch_size)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("training", total=steps * epochs, loss="-")

        def on_step(report: StepReport) -> None:
            progress.update(
                task,
                completed=report.epoch * steps + report.step + 1,
                description=f"epoch {report.epoch + 1}/{epochs}",
                loss=f"{report.loss:.4f}",
            )

        result = trainer.fit(dataset, out=out, resume=resume, on_step=on_step)
    table = Table("epoch", "mean loss", title="training loss")
    for index, loss in enumerate(result.epoch_losses):
        resumed = " (earlier run)" if index < result.start_epoch else ""
        table.add_row(f"{index + 1}{resumed}", f"{loss:.4f}")
    Console().print(table)
    if result.checkpoint is None:
        console.print(
            f"nothing to do: {resume} already has {result.start_epoch} epochs (ask for more with --epochs)",
            highlight=False,
        )
        return
    console.print(f"wrote {out} (use it with: normadd inspect --projections {out})", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``train-projections`` to the ``normadd`` app (with its one-line error handling)."""
    app.command("train-projections")(friendly_errors(train_projections))
