"""Run a normality addition over image files and write maps, overlays and ``scores.csv``.

Per image: ``<name>_before.png``, ``<name>_after.png`` and ``<name>_suppression.png`` (heat-map
overlays, before/after on one colour scale), optionally the raw float maps (``save_maps="npy"`` or
``"tiff"``: ``<name>_before``, ``_suppression`` and ``_after`` at the map size), then one
``scores.csv`` (image, score_before, score_after, …) and ``run.json`` (model, normalities with
their phrases, each input path with its output name, failures). Output names are unique and say
which file they came from (:func:`normadd.images.output_stems`). Unreadable images are listed as
failures; the rest of the batch still runs. Given a
:class:`~normadd.decisions.policy.DecisionPolicy`, each row also carries its verdicts (issue 11):
``verdict_before``, ``verdict_after``, ``accepted_by``, ``threshold``, ``verdict_reason``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image
from torch import Tensor

from normadd.cache import atomic_write_bytes
from normadd.errors import NormaddError
from normadd.images import DEFAULT_RESIZE, LoadFailure, load_batch, output_stems
from normadd.normality.addition import AdditionResult, NormalityAddition
from normadd.visualize import heat_overlay, save_png, with_caption

if TYPE_CHECKING:
    from normadd.decisions.policy import DecisionPolicy
    from normadd.decisions.verdicts import Decision

# score_detector: the detector's own image score (max of its native-size map, or with
# image_score: clip APRIL-GAN's pooled-embedding score, WinCLIP's native score).
SCORE_COLUMNS = ("image", "score_before", "score_after", "normalities", "model", "score_detector")
# Issue 11's verdict columns come after every score column (old readers by name unaffected).
DECISION_COLUMNS = ("verdict_before", "verdict_after", "accepted_by", "threshold", "verdict_reason")
MAP_FORMATS = ("npy", "tiff")


def check_map_format(save_maps: str | None) -> str | None:
    """Return ``save_maps`` when it is None or a known format.

    Raises:
        NormaddError: An unknown format.
    """
    if save_maps is not None and save_maps not in MAP_FORMATS:
        raise NormaddError(f"--save-maps '{save_maps}' is unknown: choose {' or '.join(MAP_FORMATS)}")
    return save_maps


def _write_raw_maps(scored: ScoredImage, stem: str, out_dir: Path, save_maps: str) -> None:
    """The float maps before, suppression (1 - keep) and after, at the map size, as .npy or 32-bit float TIFF."""
    maps = {"before": scored.before, "suppression": 1.0 - scored.keep, "after": scored.after}
    for kind, tensor in maps.items():
        array = tensor.detach().float().cpu().numpy().astype(np.float32)
        buffer = io.BytesIO()
        if save_maps == "npy":
            np.save(buffer, array)
        else:
            Image.fromarray(array, mode="F").save(buffer, format="TIFF")
        atomic_write_bytes(out_dir / f"{stem}_{kind}.{save_maps}", buffer.getvalue())


class InspectableLine(Protocol):
    """What an inspection reads of a line: a :class:`NormalityAddition` or an exported line."""

    @property
    def input_size(self) -> int:
        """Side of the square images the line takes."""
        ...

    @property
    def description(self) -> str:
        """The line in one line."""
        ...

    @property
    def normalities(self) -> Mapping[str, Any]:
        """Active normalities by name (each with ``name``, ``text``, ``strength``, ``phrases``)."""
        ...

    @property
    def shares_clip_pass(self) -> bool:
        """True when detector and normality detector read one CLIP pass."""
        ...

    def explain(self, images: Tensor) -> AdditionResult:
        """Maps and scores before and after the normalities."""
        ...


def _is_random(model: InspectableLine) -> bool:
    if isinstance(model, NormalityAddition):
        return model.normality_detector.encoder.is_random
    return bool(getattr(model, "is_random", False))


def line_notes(model: NormalityAddition) -> list[tuple[str, str]]:
    """What to say about a built line before its results, as ``(level, text)``; level ``warning``, ``note`` or ``""``.

    Random weights, a random detector, the training-free projection fallback, and each added
    normality with its phrases.
    """
    notes: list[tuple[str, str]] = []
    encoder = model.normality_detector.encoder
    if encoder.is_random:
        notes.append(("warning", encoder.description))
    if not model.shares_clip_pass and "RANDOM" in model.detector.description:
        notes.append(("warning", f"detector: {model.detector.description}"))
    if getattr(getattr(model.detector, "projections", None), "kind", None) == "clip-head":
        notes.append(("note", "no --projections given: using the training-free fallback (CLIP ln_post + proj)"))
    for normality in model.normalities.values():
        notes.append(
            (
                "",
                f"added normality '{normality.name}' (strength {normality.strength:g}): "
                f"{', '.join(normality.phrases) or normality.text}",
            )
        )
    return notes


@dataclass
class LineSummary:
    """What the written files say about the line (overlay metadata, ``scores.csv``, ``run.json``).

    Attributes:
        description: The line in one line.
        random_weights: True when the backbone has random weights.
        shared_clip_pass: True when detector and normality detector read one CLIP pass.
        normalities: Active normalities as dicts (``name``, ``text``, ``strength``, ``phrases``).
    """

    description: str
    random_weights: bool
    shared_clip_pass: bool
    normalities: list[dict[str, Any]]

    @classmethod
    def of(cls, model: InspectableLine) -> LineSummary:
        """The summary of a built or exported line."""
        return cls(
            model.description,
            _is_random(model),
            model.shares_clip_pass,
            [
                {"name": n.name, "text": n.text, "strength": n.strength, "phrases": list(n.phrases)}
                for n in model.normalities.values()
            ],
        )

    @property
    def normalities_text(self) -> str:
        """``text:strength`` of each normality, ``; ``-separated (the ``normalities`` column)."""
        return "; ".join(f"{n['text']}:{n['strength']:g}" for n in self.normalities)


@dataclass
class ScoredImage:
    """One image's outcome of a line's pass: what the writer needs, nothing of the batch it ran in.

    Attributes:
        path: The image file.
        image: The (3, S, S) input the line saw (drawn under the overlays).
        before: The map before the normalities (H, W).
        keep: ``Π_k (1 − s_k A_sup_k)`` (H, W).
        after: The map after (H, W).
        score_before: Image score before.
        score_after: Image score after.
        score_detector: The detector's own image score.
        names: Normality names of the suppression.
        decision: The verdicts, when the run has a decision policy.
    """

    path: Path
    image: Tensor
    before: Tensor
    keep: Tensor
    after: Tensor
    score_before: float
    score_after: float
    score_detector: float
    names: list[str]
    decision: Decision | None = None


@dataclass
class ScoreRow:
    """One inspected image."""

    image: str
    score_before: float
    score_after: float
    output_stem: str
    score_detector: float | None = None
    decision: Decision | None = None


@dataclass
class InspectionReport:
    """What a run produced."""

    rows: list[ScoreRow] = field(default_factory=list)
    failures: list[LoadFailure] = field(default_factory=list)
    out_dir: Path | None = None
    model: str = ""
    decided: bool = False


def _write_overlays(scored: ScoredImage, stem: str, out_dir: Path, metadata: dict[str, str], random: bool) -> None:
    vmax = float(scored.before.max()) or 1.0
    note = " | RANDOM weights" if random else ""
    image = scored.image
    pictures = {
        "before": (heat_overlay(image, scored.before, vmax), f"before {scored.score_before:.3f}{note}"),
        "after": (heat_overlay(image, scored.after, vmax), f"after {scored.score_after:.3f}{note}"),
        "suppression": (
            heat_overlay(image, 1.0 - scored.keep, 1.0),
            f"suppression {', '.join(scored.names) or 'none'}{note}",
        ),
    }
    for kind, (picture, caption) in pictures.items():
        save_png(with_caption(picture, caption), out_dir / f"{stem}_{kind}.png", metadata)


def score_batch(
    model: InspectableLine,
    paths: Sequence[Path],
    resize: str = DEFAULT_RESIZE,
    policy: DecisionPolicy | None = None,
) -> tuple[list[ScoredImage], list[LoadFailure]]:
    """One forward pass over the readable ``paths``: each image's maps, scores and verdicts.

    Unreadable images come back as failures; the others are scored together. A detector that
    reads per-image files (saved maps) learns the batch's paths first.
    """
    loaded, images, failures = load_batch(list(paths), model.input_size, resize)
    if images is None:
        return [], failures
    prepare_batch = getattr(getattr(model, "detector", None), "prepare_batch", None)
    if callable(prepare_batch):
        prepare_batch(loaded)
    result = model.explain(images)
    decisions: list[Decision | None] = [None] * len(loaded)
    if policy is not None:
        from normadd.decisions.policy import image_size

        strengths = [n.strength for n in model.normalities.values()]
        sizes = [image_size(path) for path in loaded] if policy.has_limits else None
        decided = policy.apply(result, strengths, sizes)
        result, decisions = decided.result, list(decided.decisions)
    scored = [
        ScoredImage(
            path,
            images[i],
            result.before[i].detach().cpu(),
            result.keep[i].detach().cpu(),
            result.after[i].detach().cpu(),
            float(result.before_scores[i]),
            float(result.after_scores[i]),
            float(result.detector_scores[i]),
            list(result.names),
            decisions[i],
        )
        for i, path in enumerate(loaded)
    ]
    return scored, failures


class InspectionWriter:
    """Writes an inspection's files as its images arrive, in input order, then ``scores.csv`` and ``run.json``.

    Args:
        paths: Every input image, in order (output names are chosen from all of them).
        out_dir: Output folder (created).
        line: What the files say about the line.
        save_maps: Also write the raw float maps: ``npy``, ``tiff`` or None.
        decided: True when rows carry verdicts (the verdict columns are written).
    """

    def __init__(
        self, paths: Sequence[Path], out_dir: str | Path, line: LineSummary, save_maps: str | None, decided: bool
    ) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.line = line
        self.save_maps = check_map_format(save_maps)
        self.stems = dict(zip(paths, output_stems(paths), strict=True))
        self.metadata = {"normadd-model": line.description, "normadd-normalities": line.normalities_text or "none"}
        self.report = InspectionReport(out_dir=self.out, model=line.description, decided=decided)

    def add(self, scored: ScoredImage) -> None:
        """Write one image's overlays (and raw maps) and keep its row."""
        stem = self.stems[scored.path]
        _write_overlays(scored, stem, self.out, self.metadata, self.line.random_weights)
        if self.save_maps is not None:
            _write_raw_maps(scored, stem, self.out, self.save_maps)
        self.report.rows.append(
            ScoreRow(
                str(scored.path), scored.score_before, scored.score_after, stem, scored.score_detector, scored.decision
            )
        )

    def fail(self, failure: LoadFailure) -> None:
        """Record an image that could not be read."""
        self.report.failures.append(failure)

    def finish(self) -> InspectionReport:
        """Write ``scores.csv`` and ``run.json``; return the report."""
        _write_scores(self.report, self.out / "scores.csv", self.line.normalities_text)
        _write_run_record(self.report, self.line, self.out / "run.json")
        return self.report


def inspect_images(
    model: InspectableLine,
    paths: Sequence[Path],
    out_dir: str | Path,
    batch_size: int = 4,
    on_progress: Callable[[int], None] | None = None,
    resize: str = DEFAULT_RESIZE,
    save_maps: str | None = None,
    policy: DecisionPolicy | None = None,
) -> InspectionReport:
    """Inspect ``paths`` before and after the added normalities; write everything to ``out_dir``.

    Args:
        model: The detector wrapped with its normalities, or an exported line.
        paths: Image files.
        out_dir: Output folder (created).
        batch_size: Images per forward pass.
        on_progress: Called with the number of images handled after each batch.
        resize: How images become square: ``squash`` or ``letterbox``.
        save_maps: Also write the raw float maps: ``npy``, ``tiff`` or None.
        policy: The line's decisions (threshold, limits); rows then carry verdicts, and
            normalities with limits suppress only what they may let through.
    """
    check_map_format(save_maps)
    writer = InspectionWriter(paths, out_dir, LineSummary.of(model), save_maps, policy is not None)
    # Detectors that read per-image files (saved maps) check them all first.
    check_images = getattr(getattr(model, "detector", None), "check_images", None)
    if callable(check_images):
        check_images(paths)
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        scored, failures = score_batch(model, chunk, resize, policy)
        for failure in failures:
            writer.fail(failure)
        for item in scored:
            writer.add(item)
        if on_progress is not None:
            on_progress(len(chunk))
    return writer.finish()


def _write_scores(report: InspectionReport, path: Path, normalities: str) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(SCORE_COLUMNS + (DECISION_COLUMNS if report.decided else ()))
    for row in report.rows:
        detector_score = "" if row.score_detector is None else f"{row.score_detector:.6f}"
        values = [
            row.image,
            f"{row.score_before:.6f}",
            f"{row.score_after:.6f}",
            normalities,
            report.model,
            detector_score,
        ]
        if report.decided and row.decision is not None:
            decision = row.decision
            threshold = "" if decision.threshold is None else repr(decision.threshold)
            values += [
                decision.verdict_before,
                decision.verdict_after,
                decision.accepted_by_text,
                threshold,
                decision.reason,
            ]
        writer.writerow(values)
    atomic_write_bytes(path, buffer.getvalue().encode())


def _row_record(row: ScoreRow) -> dict[str, object]:
    record = {k: v for k, v in asdict(row).items() if k != "decision"}
    if row.decision is not None:
        record.update(row.decision.as_dict())
    return record


def _write_run_record(report: InspectionReport, line: LineSummary, path: Path) -> None:
    record = {
        "model": report.model,
        "random_weights": line.random_weights,
        "shared_clip_pass": line.shared_clip_pass,
        "normalities": line.normalities,
        "images": [_row_record(row) for row in report.rows],
        "failures": [{"path": str(f.path), "reason": f.reason} for f in report.failures],
    }
    atomic_write_bytes(path, json.dumps(record, indent=2).encode())
