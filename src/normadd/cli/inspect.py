"""``normadd inspect``, ``demo``, ``phrases`` and ``backbones``: score images before and after normalities."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from normadd.cli import options as opt
from normadd.cli.common import console, friendly_errors, inert, progress_bar, quiet_libraries, say
from normadd.errors import NormaddError

if TYPE_CHECKING:  # the CLI imports torch-heavy modules only when a command runs
    from rich.progress import Progress, TaskID

    from normadd.config import LineConfig
    from normadd.decisions.policy import DecisionPolicy
    from normadd.inspection import InspectableLine, InspectionReport


def run_inspection(
    images: list[Path],
    config: LineConfig,
    add: list[str],
    out: Path,
    batch_size: int,
    device: str,
    precision: str,
    llm: bool = False,
    examples: list[Path] | None = None,
    masks: list[Path] | None = None,
    save_maps: str | None = None,
    threshold: str | None = None,
    ray_address: str | None = None,
) -> None:
    """Score the images with the line before and after its normalities; print and write the results.

    With ``ray_address`` (``""``: the default Ray) the forward passes run on Ray
    (:mod:`normadd.batch.ray_pipeline`) and no model is built in this process.
    """
    from normadd.config import ExampleSetting, NormalitySetting
    from normadd.factory import build_addition
    from normadd.images import collect_images, first_readable
    from normadd.inspection import check_map_format, line_notes
    from normadd.runtime import resolve_runtime

    quiet_libraries()
    if llm:
        config.phrase_generator = "llm"
    config.normalities += [NormalitySetting.parse(spec) for spec in add]
    if masks and len(masks) != len(examples or []):
        raise NormaddError(
            f"{len(masks)} --mask for {len(examples or [])} --add-example: give one --mask per example, or none"
        )
    if examples:
        config.examples.append(ExampleSetting([str(p) for p in examples], [str(p) for p in masks] if masks else None))
    if batch_size < 1:
        raise NormaddError("--batch-size must be at least 1")
    check_map_format(save_maps)

    paths = collect_images(images)
    first_readable(paths)  # no readable input: say so before any model loads
    policy = _decision_policy(config, threshold, paths)
    runtime = resolve_runtime(device, precision)
    if runtime.note:
        say("note:", runtime.note)
    if ray_address is not None:
        _inspect_on_ray(config, paths, out, batch_size, device, precision, policy, save_maps, ray_address)
        return
    with progress_bar() as progress:  # a spinner while loading; a PatchCore fit adds its own bars
        loading = progress.add_task("loading model and encoding texts", total=None)
        try:
            model = build_addition(config, runtime, ProgressBars(progress))
        except BaseException:
            for task in list(progress.task_ids):  # a load error stays one line: no half-drawn bars above it
                progress.remove_task(task)
            raise
        progress.update(loading, total=1, completed=1)
    _say_notes(line_notes(model))
    _inspect_and_report(model, paths, out, batch_size, policy, config.resize, save_maps)


def _inspect_and_report(
    model: InspectableLine,
    paths: list[Path],
    out: Path,
    batch_size: int,
    policy: DecisionPolicy | None,
    resize: str,
    save_maps: str | None,
) -> None:
    """Score ``paths`` with a built or exported line; print the table and write the outputs."""
    from normadd.inspection import inspect_images

    with progress_bar() as progress:
        task = progress.add_task("inspecting", total=len(paths))
        report = inspect_images(
            model,
            paths,
            out,
            batch_size,
            on_progress=lambda n: progress.advance(task, n),
            resize=resize,
            save_maps=save_maps,
            policy=policy,
        )
    _print_report(report, policy, out)


def _say_notes(notes: list[tuple[str, str]]) -> None:
    """Print :func:`normadd.inspection.line_notes` lines."""
    prefixes = {"warning": "[yellow]warning:[/]", "note": "note:", "": ""}
    for level, text in notes:
        say(prefixes.get(level, ""), text)


def _inspect_on_ray(
    config: LineConfig,
    paths: list[Path],
    out: Path,
    batch_size: int,
    device: str,
    precision: str,
    policy: DecisionPolicy | None,
    save_maps: str | None,
    ray_address: str,
) -> None:
    """The forward passes on Ray (one model per actor), the outputs written here as the local path writes them."""
    from normadd.batch.ray_pipeline import connect, inspect_on_ray

    with connect(ray_address or None) as session:
        say(
            "note:",
            f"image passes on {session.where} ({session.actors} actor(s) at most; "
            f"{session.cpus:g} CPUs, {session.gpus:g} GPUs)",
        )
        with progress_bar() as progress:
            task = progress.add_task("inspecting on Ray", total=len(paths))
            result = inspect_on_ray(
                session,
                config,
                paths,
                out,
                batch_size,
                device,
                precision,
                config.resize,
                save_maps,
                policy,
                on_progress=lambda n: progress.advance(task, n),
            )
    _say_notes(result.notes)
    _print_report(result.report, policy, out)


def _print_report(report: InspectionReport, policy: DecisionPolicy | None, out: Path) -> None:
    """The scores table, the verdict summary, the skipped images; exit 2 when any image could not be read."""
    table = Table(
        "image", "output name", "before", "after", "verdict", "accepted by", title=f"scores ({len(report.rows)} images)"
    )
    for row in report.rows[:20]:
        name, output = inert(Path(row.image).name), inert(row.output_stem)
        decision = row.decision
        verdicts = "-" if decision is None else f"{decision.verdict_before} -> {decision.verdict_after}"
        accepted = "" if decision is None else inert(decision.accepted_by_text)
        table.add_row(name, output, f"{row.score_before:.4f}", f"{row.score_after:.4f}", verdicts, accepted)
    Console().print(table)
    _print_verdict_summary(report, policy)
    if len(report.rows) > 20:
        console.print(f"… {len(report.rows) - 20} more rows in scores.csv")
    for failure in report.failures:
        say("[red]skipped:[/]", failure.reason)
    say("", f"wrote maps, scores.csv and run.json (input -> output names) to {out}")
    if report.failures:
        console.print(f"[bold red]error:[/] {len(report.failures)} image(s) could not be read (listed above)")
        raise typer.Exit(2)


def run_exported_inspection(
    images: list[Path],
    export: Path,
    runtime_name: str,
    config_file: Path | None,
    class_name: str | None,
    add: list[str],
    line_options: dict[str, Any],
    out: Path,
    batch_size: int,
    threshold: str | None = None,
    save_maps: str | None = None,
) -> None:
    """Score images with a line exported by ``normadd export``, run by onnxruntime or OpenVINO.

    With ``--config``, ``--class-name``, ``--add`` or any shared line option the export must be that
    line (class, object word, backbone, run size, layers, resize, weights, normalities), or it is
    refused with the differences named. Images are made square with the export's ``resize``.
    Verdicts use ``--threshold``, else the config's threshold, else the one in the export's manifest.
    """
    from normadd.config import LineConfig, NormalitySetting
    from normadd.export.runtime import ExportedLine, normality_differences, setting_differences
    from normadd.images import collect_images, first_readable
    from normadd.inspection import check_map_format

    if batch_size < 1:
        raise NormaddError("--batch-size must be at least 1")
    check_map_format(save_maps)
    paths = collect_images(images)
    first_readable(paths)  # no readable input: say so before the export loads
    with console.status(f"loading the export on {runtime_name}"):
        model = ExportedLine(export, runtime_name)
    manifest = model.manifest
    config = LineConfig(
        class_name=manifest.class_name,
        backbone=manifest.backbone,
        weights=manifest.weights,
        projections=manifest.projections,
        layers=manifest.layers,
        object_name=manifest.object_name,
        resize=manifest.resize,
        threshold=manifest.threshold,
        threshold_scale=manifest.threshold_scale,
        normalities=[NormalitySetting(n.text, n.strength, n.name) for n in manifest.normalities],
    )
    given = {key: value for key, value in line_options.items() if value is not None}
    if config_file is not None or class_name is not None or add or given:
        if config_file is None:  # the export's line with the options given changed
            given.setdefault("backbone", manifest.backbone)
        config = opt.line_from_options(
            config_file, class_name or (None if config_file else manifest.class_name), **given
        )
        config.normalities += [NormalitySetting.parse(spec) for spec in add]
        active = [(n.name or n.text, n.text, n.strength) for n in config.normalities]
        problems = setting_differences(manifest, config) + normality_differences(manifest.normalities, active)
        if problems:
            raise NormaddError(
                f"export {export} is not this line ({'; '.join(problems)}): re-export it with 'normadd export' "
                "and the same options"
            )
    policy = _decision_policy(config, threshold, paths)
    if model.is_random:
        say("[yellow]warning:[/]", model.description)
    for normality in model.normalities.values():
        say(
            "",
            f"normality '{normality.name}' (strength {normality.strength:g}, in the export): "
            f"{', '.join(normality.phrases) or normality.text}",
        )
    _inspect_and_report(model, paths, out, batch_size, policy, model.resize, save_maps)


def _decision_policy(config: LineConfig, threshold: str | None, paths: list[Path]) -> DecisionPolicy:
    """The line's decisions: the config's threshold (or ``--threshold``), limits and region masks.

    Region masks are checked against every image's aspect ratio before anything runs.
    """
    from normadd.decisions import DecisionError, check_threshold
    from normadd.decisions.policy import DecisionPolicy, ThresholdSetting, image_size

    given = None if threshold is None else ThresholdSetting(check_threshold(threshold, "--threshold"), None, "option")
    policy = DecisionPolicy.from_config(config, given)
    if any(item.region is not None for item in policy.limits.values()):
        sizes, names = [], []
        for path in paths:
            try:
                sizes.append(image_size(path))
                names.append(str(path))
            except DecisionError:
                continue  # an unreadable image is reported as skipped by the inspection
        policy.check_images(sizes, names)
    return policy


def _print_verdict_summary(report: InspectionReport, policy: DecisionPolicy | None) -> None:
    """One line of verdict counts, or why there are none."""
    if policy is None or not report.rows:
        return
    if policy.reason is not None:
        say("note:", f"verdicts undecided: {policy.reason}")
        return
    decisions = [row.decision for row in report.rows if row.decision is not None]
    ng_before = sum(d.verdict_before == "NG" for d in decisions)
    ng_after = sum(d.verdict_after == "NG" for d in decisions)
    console.print(
        f"verdicts at threshold {policy.value:.6g}: NG {ng_before} before -> {ng_after} after "
        f"({ng_before - ng_after} accepted by the added normalities) of {len(decisions)} images",
        highlight=False,
    )


class ProgressBars:
    """A :class:`normadd.progress.ProgressHook` that shows each stage as a rich bar."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def start(self, description: str, total: int) -> None:
        """Begin a new bar."""
        self.task = self.progress.add_task(description, total=total or None)

    def advance(self, count: int) -> None:
        """Move the current bar on."""
        if self.task is not None:
            self.progress.advance(self.task, count)


def register(app: typer.Typer) -> None:
    """Add ``inspect``, ``demo``, ``phrases`` and ``backbones`` to the ``normadd`` app."""

    @app.command()
    @friendly_errors
    def inspect(
        images: Annotated[list[Path], typer.Argument(help="Image files or folders of images.", show_default=False)],
        class_name: opt.ClassName = None,
        add: Annotated[list[str], typer.Option("--add", "-a", help="Normality text, optionally 'text:strength'.")] = [],  # noqa: B006
        config_file: opt.ConfigFile = None,
        object_name: opt.ObjectName = None,
        backbone: opt.Backbone = None,
        weights: opt.Weights = None,
        projections: opt.Projections = None,
        layers: opt.Layers = None,
        image_size: opt.ImageSize = None,
        resize: opt.Resize = None,
        image_score: opt.ImageScore = None,
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("normadd-out"),
        batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 4,
        device: opt.Device = "auto",
        precision: opt.Precision = "auto",
        llm: Annotated[bool, typer.Option("--llm", help="Ask an OpenAI-compatible endpoint for phrases.")] = False,
        add_example: Annotated[
            list[Path], typer.Option("--add-example", help="Example image of a defect to accept (repeatable).")
        ] = [],  # noqa: B006
        mask: Annotated[list[Path], typer.Option("--mask", help="Defect mask of each --add-example, in order.")] = [],  # noqa: B006
        detector: opt.Detector = None,
        model: opt.Model = None,
        shots: opt.Shots = None,
        reference: opt.Reference = None,
        maps: opt.Maps = None,
        memory_bank: opt.MemoryBank = None,
        detector_backbone: opt.DetectorBackbone = None,
        detector_weights: opt.DetectorWeights = None,
        coreset: opt.Coreset = None,
        runtime: opt.Runtime = None,
        export: opt.Export = None,
        save_maps: Annotated[
            str | None,
            typer.Option(help="Also write the raw float maps (before, suppression, after) as npy or tiff."),
        ] = None,
        threshold: Annotated[
            str | None, typer.Option(help="NG when a score is above it (default: the config's threshold).")
        ] = None,
        ray: opt.Ray = False,
        ray_address: opt.RayAddress = None,
    ) -> None:
        """Score images before and after adding normalities; write overlays, scores.csv and run.json."""
        from normadd.detectors.inference_sessions import resolve_line_runtime

        line_options: dict[str, Any] = {
            "backbone": backbone,
            "weights": weights,
            "projections": projections,
            "layers": layers,
            "object_name": object_name,
            "image_size": image_size,
            "resize": resize,
            "image_score": image_score,
            "detector": detector,
            "shots": shots,
            "reference": reference,
            "maps": maps,
            "memory_bank": memory_bank,
            "detector_backbone": detector_backbone,
            "detector_weights": detector_weights,
            "model": model,
            "coreset": coreset,
        }
        runtime_name = resolve_line_runtime(runtime or "auto", export is not None)
        target = opt.ray_target(ray, ray_address)
        if target is not None and export is not None:
            raise NormaddError(
                "--ray runs a line built from its settings, an export runs here: leave out --export "
                "(the actors build the line from --config and the line options) or --ray"
            )
        if export is not None:
            if add_example or mask or llm:
                raise NormaddError(
                    "--add-example, --mask and --llm change the line, an export's normalities are fixed: "
                    "add them to the line, then export it again ('normadd export')"
                )
            quiet_libraries()
            run_exported_inspection(
                images, export, runtime_name, config_file, class_name, add, line_options, out, batch_size,
                    threshold, save_maps,
            )
            return
        config = opt.line_from_options(config_file, class_name, **line_options)
        run_inspection(
            images,
            config,
            add,
            out,
            batch_size,
            device,
            precision,
            llm,
            add_example,
            mask,
            save_maps,
            threshold,
            ray_address=target,
        )

    @app.command()
    @friendly_errors
    def demo(
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("normadd-out/demo"),
        backbone: Annotated[
            str, typer.Option(help="'auto': ViT-L-14-336 when its weights are found, else tiny-random.")
        ] = "auto",
        weights: Annotated[Path | None, typer.Option(help="open_clip weights for ViT-L-14-336.")] = None,
        device: opt.Device = "auto",
    ) -> None:
        """Run an inspection on the bundled synthetic bottle sample with 'broken' added as normal."""
        from normadd.backbone.specs import DEFAULT_BACKBONE, TINY_RANDOM, get_backbone_spec
        from normadd.backbone.weights import resolve_weights
        from normadd.sample import write_sample

        if backbone == "auto":
            try:
                resolve_weights(get_backbone_spec(DEFAULT_BACKBONE), weights)
                backbone = DEFAULT_BACKBONE
            except NormaddError as error:
                say("note:", error)
                say("note:", f"running the demo on '{TINY_RANDOM}' instead (random weights)")
                backbone = TINY_RANDOM
        sample = write_sample(out / "sample")
        say("", f"sample images written to {out / 'sample'}")
        config = opt.line_from_options(None, "bottle", backbone=backbone, weights=weights)
        run_inspection(sample, config, ["broken"], out / "maps", 4, device, "auto")
        console.print(
            f"open {out / 'maps'} to see <image>_before.png, _after.png and _suppression.png", highlight=False
        )


    @app.command()
    @friendly_errors
    def phrases(
        class_name: Annotated[str, typer.Argument(help="Product class, e.g. capsule.")],
        text: Annotated[str, typer.Argument(help="Defect text, e.g. poke.")],
        llm: Annotated[bool, typer.Option("--llm", help="Ask an OpenAI-compatible endpoint.")] = False,
    ) -> None:
        """Show the state phrases a normality text becomes (offline lexicon, or an LLM)."""
        from normadd.prompts.llm import LLMPhraseGenerator
        from normadd.prompts.phrases import OfflinePhraseGenerator

        generator = LLMPhraseGenerator() if llm else OfflinePhraseGenerator()
        for phrase in generator.phrases(class_name, text):
            typer.echo(phrase)


    @app.command()
    def backbones(
        all_open_clip: Annotated[
            bool, typer.Option("--all", help="Also list every open_clip MODEL:TAG that --backbone accepts.")
        ] = False,
    ) -> None:
        """List the named backbones with their run size and tapped layers (every name printed whole)."""
        from normadd.backbone.specs import BACKBONES, get_backbone_spec

        rows = [("name", "open_clip model", "weights tag", "run size", "layers")]
        for spec in BACKBONES.values():
            tag = "random init (tests)" if spec.random_init else str(spec.pretrained_tag)
            rows.append((spec.name, spec.open_clip_name, tag, str(spec.image_size), ",".join(map(str, spec.layers))))
        if all_open_clip:
            import open_clip

            for model, tag in open_clip.list_pretrained():
                try:
                    spec = get_backbone_spec(f"{model}:{tag}")
                except NormaddError:
                    continue  # not a ViT CLIP (e.g. a ResNet or ConvNeXt tower): no patch tokens to tap
                rows.append((spec.name, model, tag, str(spec.image_size), ",".join(map(str, spec.layers))))
        # Plain aligned columns, never a table squeezed to the terminal: every name stays copyable.
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if not all_open_clip:
            typer.echo("\nAlso: any open_clip MODEL:TAG (normadd backbones --all) or an open_clip model config .json.")
