"""Preview a normality before go-live: which of the line's recent parts it would let through.

A preview runs the line as it is (its active normalities) and with the candidate added, on the
last N retained parts or on a folder of images, and reports the *flips*: parts that are NG now
and OK with the candidate, with their scores and verdicts before and after, and how the parts
that pass are shared among the normalities (``accepted_by``, from :mod:`normadd.decisions`).
Retained parts with stored features need no image pass: only the candidate's text is encoded.
A preview stores nothing but one audit row ("previewed by, on N parts, K flips").

"Before" in a preview is the line as it runs now (after its active normalities), "after" is
with the candidate too; ``score_detector`` is the detector's own score (no normality at all).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from normadd.decisions.policy import DecisionPolicy, image_size, limits_from_mapping
from normadd.decisions.verdicts import COMBINED, NG, OK, Decision
from normadd.detectors.base import max_scores
from normadd.detectors.segmentation import LOGIT_SCALE
from normadd.errors import NormaddError
from normadd.images import DEFAULT_RESIZE, collect_images, load_image, load_image_bytes
from normadd.normality.addition import AdditionResult
from normadd.normality.suppression import keep_factor
from normadd.normality.text_normality import AddedNormality, NormalityDetector
from normadd.registry.line_model import LineModel, embedding_from_bytes
from normadd.registry.retention import RetainedFeatures, RetentionError, RetentionStore
from normadd.registry.store import Registry

BATCH = 16


@dataclass
class PreviewPart:
    """One part as the preview saw it.

    Attributes:
        image: File name (as inspected, or the path given).
        sha256: The retained image's SHA-256 ("" for a file from ``--images``).
        score_detector: The detector's own score (no normality).
        score_before: The score as the line runs now (its active normalities).
        score_after: The score with the candidate added.
        verdict_before: OK/NG/undecided as the line runs now.
        verdict_after: OK/NG/undecided with the candidate.
        accepted_by_before: Normalities that let it through now (see :mod:`normadd.decisions.verdicts`).
        accepted_by_after: Normalities that let it through with the candidate.
        combined_after: True when, with the candidate, it passes only through normalities together.
        source: ``stored features`` or ``image pass``.
    """

    image: str
    sha256: str
    score_detector: float
    score_before: float
    score_after: float
    verdict_before: str
    verdict_after: str
    accepted_by_before: list[str]
    accepted_by_after: list[str]
    combined_after: bool
    source: str

    @property
    def flipped(self) -> bool:
        """NG as the line runs now, OK with the candidate."""
        return self.verdict_before == NG and self.verdict_after == OK


@dataclass
class PreviewReport:
    """What a preview found.

    Attributes:
        line: The line.
        name: The candidate's name.
        text: The candidate's text.
        strength: Its strength.
        phrases: Its state phrases.
        staged: True when the candidate is a staged normality of the line.
        parts: Every part previewed, newest first for retained parts.
        threshold: The threshold used, or None (then every verdict is undecided).
        reason: Why verdicts are undecided ("" when decided).
        notes: One line each: fewer parts than asked, refused records, image passes.
        refused: One line per retained record that was refused (hash mismatch, missing file).
        shares_before: Per normality (or ``combined``), how many parts it lets through now.
        shares_after: The same with the candidate.
        text_seconds: Time to encode the candidate's text (0 for a staged one).
        scoring_seconds: Time to score the parts (reading features or an image pass, and deciding).
        scoring_cpu_seconds: CPU time of the same (all threads; on a shared machine the fairer measure).
        audit_id: The audit row of this preview.
        suppression: Per part index (flips only), the candidate's suppression map (H, W) in [0, 1].
        images: Per part index (flips only), the image bytes or path, for thumbnails.
        resize: How the line makes images square (``squash`` or ``letterbox``), for thumbnails.
    """

    line: str
    name: str
    text: str
    strength: float
    phrases: list[str]
    staged: bool
    parts: list[PreviewPart] = field(default_factory=list)
    threshold: float | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    shares_before: dict[str, int] = field(default_factory=dict)
    shares_after: dict[str, int] = field(default_factory=dict)
    text_seconds: float = 0.0
    scoring_seconds: float = 0.0
    scoring_cpu_seconds: float = 0.0
    audit_id: int = 0
    suppression: dict[int, Tensor] = field(default_factory=dict, repr=False)
    images: dict[int, bytes | Path] = field(default_factory=dict, repr=False)
    resize: str = DEFAULT_RESIZE

    @property
    def flips(self) -> list[PreviewPart]:
        """Parts NG now and OK with the candidate."""
        return [part for part in self.parts if part.flipped]

    def summary(self) -> dict[str, Any]:
        """The report as plain data (what the CLI's ``--json`` and the audit row carry)."""
        return {
            "line": self.line,
            "name": self.name,
            "text": self.text,
            "strength": self.strength,
            "staged": self.staged,
            "parts": len(self.parts),
            "flips": len(self.flips),
            "ng_before": sum(p.verdict_before == NG for p in self.parts),
            "ng_after": sum(p.verdict_after == NG for p in self.parts),
            "threshold": self.threshold,
            "reason": self.reason,
            "notes": self.notes,
            "refused": self.refused,
            "shares_before": self.shares_before,
            "shares_after": self.shares_after,
        }


@dataclass
class _Batch:
    """Parts scored together: maps before, the active normalities' and the candidate's suppression."""

    names: list[str]
    shas: list[str]
    sources: list[str]
    normalities: list[AddedNormality]
    before: Tensor
    active: Tensor
    candidate: Tensor
    sizes: list[tuple[int, int] | None]
    images: list[bytes | Path]


def candidate_normality(
    model: LineModel, registry: Registry, text: str, strength: float | None, limits: dict[str, Any] | None
) -> tuple[AddedNormality, bool, dict[str, Any] | None, float]:
    """The normality to preview: a staged one of the line by name, or a new text.

    Returns:
        The normality, whether it is staged, its limits, and the seconds its text encoding took.

    Raises:
        NormaddError: The text names a normality that already applies on the line.
        ValueError: ``strength`` outside [0, 1].
    """
    detector = model.addition.normality_detector
    stored = {n.name: n for n in registry.normalities(model.line.name, ("active", "staged"))}
    match = stored.get(text)
    if match is not None and match.state == "active":
        raise NormaddError(
            f"normality '{text}' already applies on line '{model.line.name}': preview another text, "
            "or remove it and preview it again"
        )
    if match is not None:
        chosen = match.strength if strength is None else strength
        if not 0.0 <= chosen <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {chosen}")
        if match.embedding is not None and match.embedding_backbone == detector.encoder.identity:
            embedding = embedding_from_bytes(match.embedding)
            normality = AddedNormality(match.name, match.text, chosen, match.phrases, embedding)
            return normality, True, limits or match.limits, 0.0
        start = time.perf_counter()
        normality = detector.make_normality(match.text, chosen, match.name)
        return normality, True, limits or match.limits, time.perf_counter() - start
    start = time.perf_counter()
    normality = detector.make_normality(text, 1.0 if strength is None else strength)
    if normality.name in stored:  # the cleaned text names an applying normality
        raise NormaddError(f"normality '{normality.name}' already applies on line '{model.line.name}'")
    return normality, False, limits, time.perf_counter() - start


def preview(
    model: LineModel,
    registry: Registry,
    text: str,
    who: str,
    *,
    strength: float | None = None,
    limits: dict[str, Any] | None = None,
    recent: int | None = None,
    images: Sequence[str | Path] | None = None,
    why: str = "",
    keep_maps: bool = False,
) -> PreviewReport:
    """Preview ``text`` (or a staged normality of that name) on the line's recent parts or on files.

    Args:
        model: The line's model (its active normalities are read from ``registry`` first).
        registry: The registry (retained parts, threshold, limits; one audit row is written).
        text: The candidate's text, or the name of a staged normality.
        who: Who previews (audit log).
        strength: s in [0, 1] (default 1, or the staged normality's).
        limits: The candidate's acceptance limits (``max_area``, ``max_length``, ``region``).
        recent: Preview on the last ``recent`` retained parts.
        images: Or on these image files / folders.
        why: Reason (audit log).
        keep_maps: Keep the flips' images and suppression maps (for thumbnails).

    Raises:
        NormaddError: Neither or both of ``recent`` and ``images``; a line that retains nothing;
            no readable part; a text that already applies.
    """
    if (recent is None) == (images is None):
        raise NormaddError("preview needs exactly one of --recent N (retained parts) or --images DIR")
    if recent is not None and recent < 1:
        raise NormaddError(f"--recent must be at least 1, got {recent}")
    model.refresh(registry)
    normality, staged, candidate_limits, text_seconds = candidate_normality(model, registry, text, strength, limits)
    policy = model.policy(registry)
    if candidate_limits:
        checked = limits_from_mapping(normality.name, candidate_limits)
        checked.check_units(policy.pixel_size_mm, normality.name)
        policy.limits[normality.name] = checked
    report = PreviewReport(
        model.line.name, normality.name, normality.text, normality.strength, list(normality.phrases), staged
    )
    report.text_seconds = text_seconds
    report.resize = line_resize(model)
    start, cpu_start = time.perf_counter(), time.process_time()
    if recent is not None:
        batches = _retained_batches(model, registry, normality, recent, report, policy.has_limits)
    else:
        assert images is not None
        batches = _file_batches(model, normality, [Path(p) for p in images], report, policy.has_limits)
    for batch in batches:
        _decide(policy, normality, batch, report, keep_maps)
    report.scoring_seconds = time.perf_counter() - start
    report.scoring_cpu_seconds = time.process_time() - cpu_start
    if not report.parts:
        raise NormaddError(f"no part could be previewed: {'; '.join(report.refused) or 'no readable image'}")
    report.threshold = policy.value
    report.reason = policy.reason or ""
    details = {k: v for k, v in report.summary().items() if k not in ("line", "notes")}
    details["source"] = f"recent {recent}" if recent is not None else "images"
    report.audit_id = registry.audit_event(
        model.line.name,
        "normality.preview",
        who,
        why,
        details | {"refused": len(report.refused)},
    )
    return report


def suppression_from_stored(
    detector: NormalityDetector, parts: Sequence[RetainedFeatures], normalities: Sequence[AddedNormality]
) -> Tensor:
    """``A_sup`` of text normalities from retained features: (B, K, size, size), one channel per normality.

    The formula of :func:`normadd.detectors.segmentation.layer_maps`, averaged over layers as
    :meth:`NormalityDetector.suppression_from_projected` does, computed part by part on the patch
    grid: the stored tokens are already L2-normalised (not normalised again), each layer is
    widened to float32 in one reused buffer, and only the small (N, K) logits are kept. At
    ViT-L-14-336 that avoids allocating (and page-faulting) tens of MB per part; the maps agree
    with a fresh pass within the tolerance the how-to page states (tests check it).

    Raises:
        NormaddError: A visual normality (it needs the raw patch tokens: use an image pass).
    """
    if any(n.kind == "visual" or n.embedding is None for n in normalities):
        raise NormaddError("visual normalities need an image pass: stored features hold projected tokens only")
    embeddings = torch.stack([n.embedding for n in normalities if n.embedding is not None])
    differences = (embeddings - detector.normal_embedding.unsqueeze(0)).T.float()  # (D, K)
    buffer = torch.empty(parts[0].projected[0].shape, dtype=torch.float32)  # reused: new pages cost more than copying
    logits = torch.stack(
        [torch.stack([buffer.copy_(tokens) @ differences for tokens in part.projected]) for part in parts]
    )  # (B, L, N, K)
    batch, layers, _, count = logits.shape
    rows, cols = parts[0].grid_size
    grid = (LOGIT_SCALE * logits).permute(0, 1, 3, 2).reshape(batch * layers, count, rows, cols)
    size = detector.size
    maps = torch.sigmoid(F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True))
    return maps.reshape(batch, layers, count, size, size).mean(dim=1)


def _active(model: LineModel, now: datetime) -> list[AddedNormality]:
    """The normalities that apply now (an ``until`` that passed counts as gone, without writing)."""
    return [n for n in model.addition.normalities.values() if n.name not in model.until or model.until[n.name] > now]


def _retained_batches(
    model: LineModel, registry: Registry, candidate: AddedNormality, count: int, report: PreviewReport, sizes: bool
) -> Iterator[_Batch]:
    """Batches of retained parts, read (and hash-checked) one batch at a time so memory stays bounded."""
    store = RetentionStore.for_line(registry, model.line.name)
    items = store.recent(count)
    if not items:
        if store.settings is None:
            raise NormaddError(
                f"line '{model.line.name}' retains no images: set retain: {{images: N}} in its line config "
                "(then inspect through the service), or preview on files with --images DIR"
            )
        raise NormaddError(
            f"line '{model.line.name}' has retained no image yet: inspect parts first, or use --images DIR"
        )
    if len(items) < count:
        report.notes.append(f"asked for the last {count} parts, {len(items)} are retained: previewing on those")
    active = _active(model, registry.clock())
    visual = any(n.kind == "visual" for n in active)
    identity = model.features_identity
    detector = model.addition.normality_detector
    passes: list[tuple[str, str, bytes]] = []
    for start in range(0, len(items), BATCH):
        stored: list[tuple[str, str, bytes, RetainedFeatures]] = []
        for item in items[start : start + BATCH]:
            try:
                data = store.read_image(item)
                features = None if visual else store.read_features(item, identity)
            except RetentionError as error:
                report.refused.append(str(error))
                continue
            if features is None:
                passes.append((item.filename, item.sha256, data))
            else:
                stored.append((item.filename, item.sha256, data, features))
        if not stored:
            continue
        maps = suppression_from_stored(detector, [f for *_, f in stored], [*active, candidate])
        yield _Batch(
            [name for name, *_ in stored],
            [sha for _, sha, *_ in stored],
            ["stored features"] * len(stored),
            active,
            torch.stack([f.before for *_, f in stored]),
            maps[:, : len(active)],
            maps[:, len(active)],
            [image_size(data) if sizes else None for _, _, data, _ in stored],
            [data for _, _, data, _ in stored],
        )
    if report.refused:
        report.notes.append(f"{len(report.refused)} retained record(s) refused (not matching their SHA-256)")
    if passes:
        why = "an active normality is visual" if visual else "no features stored for this model"
        report.notes.append(f"{len(passes)} part(s) needed an image pass ({why})")
    for start in range(0, len(passes), BATCH):
        chunk = passes[start : start + BATCH]
        resize = line_resize(model)
        tensors = torch.stack(
            [load_image_bytes(data, model.input_size, name, resize=resize) for name, _, data in chunk]
        )
        yield _image_pass(
            model,
            candidate,
            tensors,
            [name for name, *_ in chunk],
            [sha for _, sha, _ in chunk],
            [image_size(data) if sizes else None for *_, data in chunk],
            [data for *_, data in chunk],
        )


def _file_batches(
    model: LineModel, candidate: AddedNormality, inputs: list[Path], report: PreviewReport, sizes: bool
) -> Iterator[_Batch]:
    """Batches of image files, each with one image pass."""
    paths = collect_images(inputs)
    for start in range(0, len(paths), BATCH):
        loaded: list[Path] = []
        tensors: list[Tensor] = []
        for path in paths[start : start + BATCH]:
            try:
                tensors.append(load_image(path, model.input_size, line_resize(model)))
                loaded.append(path)
            except NormaddError as error:
                report.refused.append(str(error))
        if loaded:
            shapes = [image_size(path) if sizes else None for path in loaded]
            names = [str(path) for path in loaded]
            yield _image_pass(model, candidate, torch.stack(tensors), names, [""] * len(loaded), shapes, list(loaded))
    if report.refused:
        report.notes.append(f"{len(report.refused)} image(s) could not be read and were skipped")


def line_resize(model: LineModel) -> str:
    """How the line makes images square (its stored ``resize``), as its inspections decode them."""
    return str(model.line.settings.get("resize", DEFAULT_RESIZE))


def _image_pass(
    model: LineModel,
    candidate: AddedNormality,
    images: Tensor,
    names: list[str],
    shas: list[str],
    sizes: list[tuple[int, int] | None],
    sources: list[bytes | Path],
) -> _Batch:
    """One CLIP pass: the line's maps now, and the candidate's map from the same projected tokens."""
    result = model.explain(images, keep_projected=True)
    assert result.projected is not None and result.grid_size is not None
    detector = model.addition.normality_detector
    if candidate.kind == "visual":  # not reachable from the CLI/REST (texts only); kept honest
        raise NormaddError("a visual normality cannot be previewed by text")
    candidate_map = detector.suppression_from_projected(result.projected, result.grid_size, [candidate])[:, 0]
    applied = {n.name: n for n in model.addition.normalities.values()}
    normalities = [applied[name] for name in result.names]
    return _Batch(
        names,
        shas,
        ["image pass"] * len(names),
        normalities,
        result.before,
        result.suppression,
        candidate_map,
        sizes,
        sources,
    )


def _result(before: Tensor, suppression: Tensor, strengths: list[float], names: list[str]) -> AdditionResult:
    keep = keep_factor(suppression, torch.tensor(strengths, dtype=torch.float32))
    after = before * keep
    scores = max_scores(before)
    return AdditionResult(before, scores, scores, suppression, keep, after, max_scores(after), names)


def _decide(
    policy: DecisionPolicy,
    candidate: AddedNormality,
    batch: _Batch,
    report: PreviewReport,
    keep_maps: bool,
) -> None:
    active_names = [n.name for n in batch.normalities]
    strengths = [n.strength for n in batch.normalities]
    now = policy.apply(_result(batch.before, batch.active, strengths, active_names), strengths, batch.sizes)
    with_suppression = torch.cat([batch.active, batch.candidate.unsqueeze(1)], dim=1)
    with_strengths = [*strengths, candidate.strength]
    names = [*active_names, candidate.name]
    then = policy.apply(_result(batch.before, with_suppression, with_strengths, names), with_strengths, batch.sizes)
    for i in range(batch.before.shape[0]):
        before: Decision = now.decisions[i]
        after: Decision = then.decisions[i]
        part = PreviewPart(
            image=batch.names[i],
            sha256=batch.shas[i],
            score_detector=float(now.result.before_scores[i]),
            score_before=float(now.result.after_scores[i]),
            score_after=float(then.result.after_scores[i]),
            verdict_before=before.verdict_after,
            verdict_after=after.verdict_after,
            accepted_by_before=list(before.accepted_by),
            accepted_by_after=list(after.accepted_by),
            combined_after=after.combined,
            source=batch.sources[i],
        )
        index = len(report.parts)
        report.parts.append(part)
        for shares, decision in ((report.shares_before, before), (report.shares_after, after)):
            if decision.flipped:  # NG for the detector alone, OK with the normalities
                keys = [COMBINED] if decision.combined else list(decision.accepted_by)
                for key in keys:
                    shares[key] = shares.get(key, 0) + 1
        if keep_maps and part.flipped:
            report.suppression[index] = then.result.suppression[i, -1].clone()
            report.images[index] = batch.images[i]
