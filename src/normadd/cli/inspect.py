"""``normadd inspect``, ``demo``, ``phrases`` and ``backbones``: score images before and after normalities."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from normadd.cli.common import console, friendly_errors, progress_bar, quiet_libraries
from normadd.errors import NormaddError

if TYPE_CHECKING:  # the CLI imports torch-heavy modules only when a command runs
    from normadd.config import LineConfig
    from normadd.decisions.policy import DecisionPolicy
    from normadd.inspection import InspectionReport


def run_inspection(
    images: list[Path],
    class_name: str | None,
    add: list[str],
    config_file: Path | None,
    backbone: str | None,
    weights: Path | None,
    projections: Path | None,
    layers: str | None,
    out: Path,
    batch_size: int,
    device: str,
    precision: str,
    llm: bool,
    examples: list[Path] | None = None,
    masks: list[Path] | None = None,
    detector_options: dict[str, Any] | None = None,
    threshold: str | None = None,
) -> None:
    """Build the line from the options, score the images and print and write the results."""
    from normadd.config import ExampleSetting, NormalitySetting, config_from_options
    from normadd.detectors.registry import check_detector_name
    from normadd.factory import build_addition
    from normadd.images import collect_images
    from normadd.inspection import inspect_images
    from normadd.runtime import resolve_runtime

    quiet_libraries()
    config = config_from_options(config_file, class_name, backbone, weights, projections)
    if layers is not None:
        try:
            config.layers = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            raise NormaddError(f"--layers '{layers}' must be comma-separated block numbers, e.g. 6,12,18,24") from None
    if llm:
        config.phrase_generator = "llm"
    for key, value in (detector_options or {}).items():
        if value is not None:
            setattr(config, key, str(value) if isinstance(value, Path) else value)
    check_detector_name(config.detector)
    config.normalities += [NormalitySetting.parse(spec) for spec in add]
    if masks and len(masks) != len(examples or []):
        raise NormaddError(
            f"{len(masks)} --mask for {len(examples or [])} --add-example: give one --mask per example, or none"
        )
    if examples:
        config.examples.append(ExampleSetting([str(p) for p in examples], [str(p) for p in masks] if masks else None))
    if batch_size < 1:
        raise NormaddError("--batch-size must be at least 1")

    paths = collect_images(images)
    policy = _decision_policy(config, threshold, paths)
    runtime = resolve_runtime(device, precision)
    if runtime.note:
        console.print(f"note: {runtime.note}")
    with console.status("loading model and encoding texts"):
        model = build_addition(config, runtime)
    encoder = model.normality_detector.encoder
    if encoder.is_random:
        console.print(f"[yellow]warning:[/] {encoder.description}", highlight=False)
    if not model.shares_clip_pass and "RANDOM" in model.detector.description:
        console.print(f"[yellow]warning:[/] detector: {model.detector.description}", highlight=False)
    if getattr(getattr(model.detector, "projections", None), "kind", None) == "clip-head":
        console.print(
            "note: no --projections given: using the training-free fallback (CLIP ln_post + proj)",
            highlight=False,
        )
    for normality in model.normalities.values():
        console.print(
            f"added normality '{normality.name}' (strength {normality.strength:g}): "
            f"{', '.join(normality.phrases) or normality.text}",
            highlight=False,
        )
    with progress_bar() as progress:
        task = progress.add_task("inspecting", total=len(paths))
        report = inspect_images(
            model, paths, out, batch_size, on_progress=lambda n: progress.advance(task, n), policy=policy
        )
    table = Table("image", "before", "after", "verdict", "accepted by", title=f"scores ({len(report.rows)} images)")
    for row in report.rows[:20]:
        decision = row.decision
        verdicts = "-" if decision is None else f"{decision.verdict_before} -> {decision.verdict_after}"
        accepted = "" if decision is None else decision.accepted_by_text
        table.add_row(Path(row.image).name, f"{row.score_before:.4f}", f"{row.score_after:.4f}", verdicts, accepted)
    Console().print(table)
    _print_verdict_summary(report, policy)
    if len(report.rows) > 20:
        console.print(f"… {len(report.rows) - 20} more rows in scores.csv")
    for failure in report.failures:
        console.print(f"[red]skipped:[/] {failure.reason}", highlight=False, soft_wrap=True)
    console.print(f"wrote maps and scores.csv to {out}", highlight=False)
    if report.failures:
        console.print(f"[bold red]error:[/] {len(report.failures)} image(s) could not be read (listed above)")
        raise typer.Exit(2)


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
        console.print(f"note: verdicts undecided: {policy.reason}", highlight=False, soft_wrap=True)
        return
    decisions = [row.decision for row in report.rows if row.decision is not None]
    ng_before = sum(d.verdict_before == "NG" for d in decisions)
    ng_after = sum(d.verdict_after == "NG" for d in decisions)
    console.print(
        f"verdicts at threshold {policy.value:.6g}: NG {ng_before} before -> {ng_after} after "
        f"({ng_before - ng_after} accepted by the added normalities) of {len(decisions)} images",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``inspect``, ``demo``, ``phrases`` and ``backbones`` to the ``normadd`` app."""

    @app.command()
    @friendly_errors
    def inspect(
        images: Annotated[list[Path], typer.Argument(help="Image files or folders of images.", show_default=False)],
        class_name: Annotated[
            str | None, typer.Option("--class-name", "-c", help="Product class, e.g. bottle.")
        ] = None,
        add: Annotated[list[str], typer.Option("--add", "-a", help="Normality text, optionally 'text:strength'.")] = [],  # noqa: B006
        config_file: Annotated[Path | None, typer.Option("--config", help="Product line YAML file.")] = None,
        backbone: Annotated[str | None, typer.Option(help="ViT-L-14-336 (default) or tiny-random.")] = None,
        weights: Annotated[Path | None, typer.Option(help="open_clip weights (.pt/.bin/.safetensors).")] = None,
        projections: Annotated[Path | None, typer.Option(help="APRIL-GAN projections checkpoint.")] = None,
        layers: Annotated[str | None, typer.Option(help="Tapped blocks, e.g. 6,12,18,24.")] = None,
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("normadd-out"),
        batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 4,
        device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
        precision: Annotated[str, typer.Option(help="auto, fp32 or bf16 (autocast on CUDA).")] = "auto",
        llm: Annotated[bool, typer.Option("--llm", help="Ask an OpenAI-compatible endpoint for phrases.")] = False,
        add_example: Annotated[
            list[Path], typer.Option("--add-example", help="Example image of a defect to accept (repeatable).")
        ] = [],  # noqa: B006
        mask: Annotated[list[Path], typer.Option("--mask", help="Defect mask of each --add-example, in order.")] = [],  # noqa: B006
        detector: Annotated[
            str | None, typer.Option(help="aprilgan (default), winclip, patchcore, maps or anomalib.")
        ] = None,
        shots: Annotated[int | None, typer.Option(help="WinCLIP reference images: 0 (zero-shot), 1 or 5.")] = None,
        reference: Annotated[
            Path | None, typer.Option(help="Folder of normal images (WinCLIP+ shots, PatchCore fit).")
        ] = None,
        maps: Annotated[Path | None, typer.Option(help="Folder of saved anomaly maps (--detector maps).")] = None,
        memory_bank: Annotated[
            Path | None, typer.Option(help="PatchCore memory bank: loaded if it exists, else fitted and saved.")
        ] = None,
        detector_backbone: Annotated[
            str | None,
            typer.Option(help="Detector's backbone (WinCLIP: ViT-B-16-plus-240; PatchCore: wide_resnet50_2)."),
        ] = None,
        detector_weights: Annotated[
            Path | None,
            typer.Option(help="Detector weights: open_clip file, torchvision state_dict or 'random', anomalib model."),
        ] = None,
        threshold: Annotated[
            str | None, typer.Option(help="NG when a score is above it (default: the config's threshold).")
        ] = None,
    ) -> None:
        """Score images before and after adding normalities; write overlays and scores.csv."""
        detector_options = {
            "detector": detector,
            "shots": shots,
            "reference": reference,
            "maps": maps,
            "memory_bank": memory_bank,
            "detector_backbone": detector_backbone,
            "detector_weights": detector_weights,
        }
        run_inspection(
            images,
            class_name,
            add,
            config_file,
            backbone,
            weights,
            projections,
            layers,
            out,
            batch_size,
            device,
            precision,
            llm,
            add_example,
            mask,
            detector_options,
            threshold,
        )


    @app.command()
    @friendly_errors
    def demo(
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("normadd-out/demo"),
        backbone: Annotated[
            str, typer.Option(help="'auto': ViT-L-14-336 when its weights are found, else tiny-random.")
        ] = "auto",
        weights: Annotated[Path | None, typer.Option(help="open_clip weights for ViT-L-14-336.")] = None,
        device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
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
                console.print(f"note: {error}", highlight=False, soft_wrap=True)
                console.print(f"note: running the demo on '{TINY_RANDOM}' instead (random weights)")
                backbone = TINY_RANDOM
        sample = write_sample(out / "sample")
        console.print(f"sample images written to {out / 'sample'}", highlight=False)
        run_inspection(
            sample,
            "bottle",
            ["broken"],
            None,
            backbone,
            weights,
            None,
            None,
            out / "maps",
            4,
            device,
            "auto",
            False,
        )
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
    def backbones() -> None:
        """List the known backbones with their run size and tapped layers."""
        from normadd.backbone.specs import BACKBONES

        table = Table("name", "open_clip model", "weights tag", "run size", "layers")
        for spec in BACKBONES.values():
            tag = "random init (tests)" if spec.random_init else str(spec.pretrained_tag)
            table.add_row(spec.name, spec.open_clip_name, tag, str(spec.image_size), ",".join(map(str, spec.layers)))
        Console().print(table)
