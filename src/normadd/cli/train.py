"""``normadd train-projections``: the training stage's command, registered on the main typer app."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from normadd.cli import options as opt
from normadd.cli.common import console, friendly_errors, quiet_libraries, say
from normadd.errors import NormaddError


def train_projections(
    data: Annotated[Path, typer.Option("--data", help="Dataset in the MVTec AD layout (root or one class folder).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (.pth).")],
    classes: Annotated[str | None, typer.Option(help="Comma-separated class folders; all when left out.")] = None,
    config_file: opt.ConfigFile = None,
    object_name: opt.ObjectName = None,
    backbone: opt.Backbone = None,
    weights: opt.Weights = None,
    layers: opt.Layers = None,
    image_size: opt.ImageSize = None,
    resize: opt.Resize = None,
    epochs: Annotated[int, typer.Option(help="Total epochs (APRIL-GAN: 3 on MVTec AD, 15 on VisA).")] = 3,
    batch_size: Annotated[int, typer.Option(help="Images per step (APRIL-GAN: 64 on a GPU).")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, order and mosaics.")] = 111,
    mosaic_rate: Annotated[float, typer.Option(help="Chance of a 2x2 mosaic per sample (APRIL-GAN: 0.2).")] = 0.2,
    resume: Annotated[Path | None, typer.Option(help="Continue a run from its checkpoint.")] = None,
    device: opt.Device = "auto",
    precision: opt.Precision = "auto",
) -> None:
    """Train APRIL-GAN's per-layer projections on images with defect masks (CLIP stays frozen).

    The line options (--config, --backbone, --weights, --layers, --image-size, --resize,
    --object-name) mean what they mean for inspect; --object-name needs a single class (--classes).
    """
    from normadd.backbone.clip_encoder import ClipEncoder
    from normadd.backbone.specs import get_backbone_spec
    from normadd.images import first_readable
    from normadd.runtime import resolve_runtime
    from normadd.training.dataset import MaskedImageDataset
    from normadd.training.trainer import ProjectionTrainer, StepReport, TrainingSettings

    quiet_libraries()
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    if object_name is not None and (class_list is None or len(class_list) != 1):
        raise NormaddError("--object-name names the object of one class: pass --classes with one class")
    # The class name is a placeholder: each trained class is named by its folder.
    line = opt.line_from_options(
        config_file,
        None if config_file is not None else "training",
        backbone=backbone,
        weights=weights,
        layers=layers,
        image_size=image_size,
        resize=resize,
    )
    settings = TrainingSettings(
        epochs=epochs, batch_size=batch_size, learning_rate=lr, seed=seed, mosaic_rate=mosaic_rate
    )
    runtime = resolve_runtime(device, precision)
    if runtime.note:
        say("note:", runtime.note)
    layers_tuple = tuple(line.layers) if line.layers else None
    spec = get_backbone_spec(line.backbone, layers_tuple, line.image_size)  # the run size, before any model loads
    object_names = {class_list[0]: object_name} if object_name is not None and class_list else {}
    if line.object_name is not None and class_list is not None and len(class_list) == 1:
        object_names.setdefault(class_list[0], line.object_name)
    with console.status("checking images and masks"):
        dataset = MaskedImageDataset.from_mvtec(
            data, spec.image_size, class_list, resize=line.resize, object_names=object_names
        )
        first_readable([sample.image for sample in dataset.samples])
    encoder = ClipEncoder.from_name(
        line.backbone, weights=line.weights, layers=layers_tuple, runtime=runtime, image_size=line.image_size
    )
    if encoder.is_random:
        say("[yellow]warning:[/]", encoder.description)
    with_masks = sum(sample.mask is not None for sample in dataset.samples)
    say(
        "",
        f"{len(dataset)} images ({with_masks} with masks) of {', '.join(dataset.class_names)} "
        f"(prompts say: {', '.join(dataset.prompt_objects)}) at {encoder.image_size} px on {encoder.spec.name}",
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
        say("", f"nothing to do: {resume} already has {result.start_epoch} epochs (ask for more with --epochs)")
        return
    say("", f"wrote {out} (use it with: normadd inspect --projections {out})")


def register(app: typer.Typer) -> None:
    """Add ``train-projections`` to the ``normadd`` app (with its one-line error handling)."""
    app.command("train-projections")(friendly_errors(train_projections))
