"""Run the evaluation: one detector pass and one CLIP pass per image, one text encoding per group.

For each class: read the test set and its groups, encode each group's name once as a normality,
get every image's :class:`~normadd.evaluation.feature_cache.ImageRecord` (from the disk cache,
or from one batched detector + CLIP pass), then compute every group's suppression map from the
cached tokens and score the protocol's rows, the selectivity, the pixel metrics and several
groups added at once. Bad input is reported as notes and the run goes on with the rest.

Decisions (issue 11): per class, a threshold is calibrated on the detector's scores of
``train/good`` at ``false_reject`` (scores cached per image, like the features), and every
added group is counted as a quality department would (:mod:`normadd.decisions.counts`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from normadd.backbone.pool import EncoderPool
from normadd.cache import atomic_write_bytes, cache_dir, cache_key
from normadd.config import LineConfig
from normadd.decisions.counts import group_decision_counts
from normadd.decisions.scoring import detector_only
from normadd.decisions.thresholds import calibrate_false_reject
from normadd.detectors.base import ClipFeatureDetector, max_scores
from normadd.errors import (
    DeviceError,
    NormaddError,
    UnknownBackboneError,
    WeightsMismatchError,
    WeightsNotFoundError,
)
from normadd.evaluation import metrics, paper
from normadd.evaluation.dataset import (
    AnomalyGroup,
    ClassTestSet,
    EvaluationDataError,
    TestImage,
    groups_for_class,
    list_classes,
    load_mask,
    mvtec_groups,
    read_class,
    read_groups_file,
)
from normadd.evaluation.feature_cache import FeatureCache, ImageRecord, file_digest
from normadd.evaluation.protocol import (
    MIN_GROUPS_FOR_SEVERAL,
    class_mean,
    headline,
    relabel,
    selectivity_subset,
    still_anomalous_subset,
)
from normadd.factory import build_addition
from normadd.images import IMAGE_SUFFIXES, first_readable, load_batch
from normadd.normality.addition import NormalityAddition
from normadd.normality.suppression import check_map, keep_factor, resize_maps
from normadd.normality.text_normality import AddedNormality
from normadd.progress import NoProgress, ProgressHook
from normadd.runtime import Runtime

DETECTORS_WITHOUT_FACTORY = ("aprilgan",)
CALIBRATION_CACHE_VERSION = 1
PAPER_DETECTORS = ("aprilgan",)  # the detector of the paper's Table 2
PAPER_TABLE3_NAMES = {  # (detector, shots) -> its Table 3 row, reported only as a mean over classes
    ("winclip", 0): "WinCLIP (zero-shot)",
    ("winclip", 1): "WinCLIP (1-shot)",
    ("winclip", 5): "WinCLIP (5-shot)",
    ("patchcore", 0): "PatchCore",
}


@dataclass
class EvaluationSettings:
    """What to evaluate and with which detector.

    Attributes:
        data: Dataset root in the MVTec AD layout.
        classes: Classes to evaluate; every class folder when None.
        groups_file: YAML ``class -> group -> [defect types]``; the shipped MVTec AD groups (and
            one group per defect type for other classes) when None.
        detector: Detector name (``aprilgan``; others once the detector factory knows them).
        line: Base product-line settings (backbone, weights, projections, ...); the class name
            is set per class.
        batch_size: Images per detector pass.
        use_cache: Read and write the on-disk feature cache.
        runtime: Device and precision.
        object_names: Class -> object word in the prompts (the groups YAML's ``object_names``);
            a class not named gets the line's ``object_name``, else its folder name with ``_`` as spaces.
    """

    data: Path
    classes: list[str] | None = None
    groups_file: Path | None = None
    detector: str = "aprilgan"
    line: LineConfig | None = None
    batch_size: int = 8
    use_cache: bool = True
    runtime: Runtime | None = None
    false_reject: float | None = 0.01  # decisions: the threshold's target on train/good; None: no decisions
    object_names: dict[str, str] = field(default_factory=dict)

    @property
    def resize(self) -> str:
        """How images and masks become square: the line's ``resize`` (``squash`` by default)."""
        return self.line.resize if self.line is not None else "squash"


@dataclass
class DecisionResult:
    """Verdict counts of one class and added group at the class's calibrated threshold (issue 11)."""

    class_name: str
    added_group: str
    threshold: float
    false_reject: float
    train_good_images: int
    good_images: int
    good_rejected_before: int
    good_rejected_after: int
    group_images: int
    group_accepted_before: int
    group_accepted_after: int
    other_images: int
    other_accepted_before: int
    other_accepted_after: int


@dataclass
class GroupResult:
    """One row of the paper's protocol (AUROC in percent)."""

    class_name: str
    group: str
    defect_types: tuple[str, ...]
    auroc_before: float | None
    auroc_after: float | None
    paper_before: float | None = None
    paper_after: float | None = None


@dataclass
class SelectivityResult:
    """Good images against another group's images, before and after adding ``added_group``."""

    class_name: str
    added_group: str
    other_group: str
    auroc_before: float | None
    auroc_after: float | None


@dataclass
class PixelResult:
    """Pixel metrics on good images and the defects that stay anomalous after adding ``group``."""

    class_name: str
    group: str
    images: int
    pixel_auroc_before: float | None
    pixel_auroc_after: float | None
    aupro_before: float | None
    aupro_after: float | None


@dataclass
class SeveralResult:
    """Every group but ``held_out`` added at once; label 1 = the held-out group's images."""

    class_name: str
    held_out: str
    added: tuple[str, ...]
    auroc_before: float | None
    auroc_after: float | None


@dataclass
class Example:
    """One image with its maps at 256 × 256, for the report's grid."""

    image_path: Path
    defect_type: str
    added_group: str
    mask: np.ndarray | None
    before_map: np.ndarray
    after_map: np.ndarray
    suppression_map: np.ndarray
    resize: str = "squash"  # how the image became square, so the report draws it under its maps


@dataclass
class ClassEvaluation:
    """Everything measured on one class."""

    name: str
    groups: list[AnomalyGroup]
    defect_types: list[str]
    scores_before: np.ndarray
    scores_after: np.ndarray
    rows: list[GroupResult] = field(default_factory=list)
    selectivity: list[SelectivityResult] = field(default_factory=list)
    pixel: list[PixelResult] = field(default_factory=list)
    several: list[SeveralResult] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    decisions: list[DecisionResult] = field(default_factory=list)

    @property
    def mean_before(self) -> float | None:
        """Class figure before: mean over its groups."""
        return class_mean(r.auroc_before for r in self.rows)

    @property
    def mean_after(self) -> float | None:
        """Class figure after: mean over its groups."""
        return class_mean(r.auroc_after for r in self.rows)


@dataclass
class CostCounts:
    """What the run actually computed, to check the cost promise."""

    images: int = 0
    detector_passes: int = 0
    clip_passes: int = 0
    group_texts: int = 0
    prompts_encoded: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_bytes_written: int = 0
    record_bytes: int = 0
    seconds: float = 0.0
    calibration_images: int = 0  # train/good images scored for the thresholds (not cached before)


@dataclass
class EvaluationResult:
    """The whole run."""

    classes: list[ClassEvaluation]
    notes: list[str]
    model: str
    detector: str
    random_weights: bool
    cost: CostCounts
    shots: int = 0

    @property
    def rows(self) -> list[GroupResult]:
        """Every protocol row of every class."""
        return [row for c in self.classes for row in c.rows]

    @property
    def headline_before(self) -> float | None:
        """Mean over classes, before."""
        return headline(c.mean_before for c in self.classes)

    @property
    def headline_after(self) -> float | None:
        """Mean over classes, after."""
        return headline(c.mean_after for c in self.classes)

    @property
    def paper_class_means(self) -> dict[str, paper.PaperRow]:
        """The paper's class figures (mean of its Table 2 rows) for the evaluated classes it reports."""
        if self.detector not in PAPER_DETECTORS:
            return {}
        names = {c.name for c in self.classes}
        return {name: row for name, row in paper.class_means().items() if name in names}

    @property
    def paper_headline(self) -> paper.PaperRow | None:
        """The paper's headline over the evaluated classes (70.6 → 75.0 when all 14 are evaluated).

        For the other detectors of Table 3 (WinCLIP, PatchCore), which the paper reports only as a
        mean, its figure is given when every one of the 14 classes was evaluated.
        """
        table3_name = PAPER_TABLE3_NAMES.get((self.detector, self.shots))
        if table3_name is not None:
            evaluated = {c.name for c in self.classes}
            return paper.table3()[table3_name] if set(paper.class_means()) <= evaluated else None
        means = list(self.paper_class_means.values())
        if not means:
            return None
        return paper.PaperRow(
            float(np.mean([m.auroc_before for m in means])), float(np.mean([m.auroc_after for m in means]))
        )


def _percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _file_fingerprint(path: str | None) -> str | None:
    if path is None or not Path(path).is_file():
        return path
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def line_config(settings: EvaluationSettings, class_name: str) -> LineConfig:
    """The product-line settings of one class: the base line with this class and no normality.

    ``--detector`` goes through to the detector factory (``LineConfig.detector``). Detectors that
    learn from normal images (PatchCore, few-shot WinCLIP) get the class's ``train/good`` folder
    when the base line names no reference folder. A normadd without the detector factory builds
    APRIL-GAN only.

    Raises:
        NormaddError: A detector this normadd cannot build.
    """
    base = settings.line or LineConfig(class_name=class_name)
    fields = {f.name for f in dataclasses.fields(LineConfig)}
    updates: dict[str, object] = {"class_name": class_name, "normalities": []}
    if class_name in settings.object_names:
        updates["object_name"] = settings.object_names[class_name]
    if "examples" in fields:
        updates["examples"] = []
    if "detector" in fields:
        updates["detector"] = settings.detector
        needs_reference = settings.detector == "patchcore" or (
            settings.detector == "winclip" and getattr(base, "shots", 0) > 0
        )
        if needs_reference and not getattr(base, "reference", None):
            updates["reference"] = str(settings.data / class_name / "train" / "good")
    elif settings.detector not in DETECTORS_WITHOUT_FACTORY:
        raise NormaddError(
            f"--detector '{settings.detector}' is not available in this normadd: "
            f"use {', '.join(DETECTORS_WITHOUT_FACTORY)}"
        )
    return dataclasses.replace(base, **updates)  # type: ignore[arg-type]


def cache_identity(addition: NormalityAddition, config: LineConfig) -> list[object]:
    """What an image record depends on besides the image: the line settings, weights and projections."""
    encoder = addition.normality_detector.encoder
    unrelated = ("normalities", "examples", "approval", "approval_expires_hours")  # who may change a line is not data
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in unrelated}
    return [
        settings,
        addition.detector.description,
        encoder.identity,
        dataclasses.asdict(encoder.spec),
        addition.normality_detector.projections.description,
        _file_fingerprint(config.projections),
        _file_fingerprint(getattr(config, "detector_weights", None)),
        _file_fingerprint(getattr(config, "memory_bank", None)),
        addition.input_size,
        addition.normality_detector.size,
    ]


@torch.inference_mode()
def compute_records(addition: NormalityAddition, images: Tensor) -> list[ImageRecord]:
    """One detector pass and one CLIP pass (a single one when they share it) for a batch."""
    detector = addition.detector
    normality_detector = addition.normality_detector
    encoder = normality_detector.encoder
    if addition.shares_clip_pass:
        assert isinstance(detector, ClipFeatureDetector)
        features = encoder.encode_images(encoder.preprocess(images))
        before = detector.detect_features(features)
    else:
        before = detector.detect(images)
        features = encoder.encode_images(encoder.preprocess(images))
    check_map(before.maps, "the detector's anomaly map")
    projected = normality_detector.project(features)
    before_maps = resize_maps(before.maps.float(), normality_detector.size).cpu()
    return [
        ImageRecord.from_outputs(before.scores[i], before_maps[i], [p[i] for p in projected], features.grid_size)
        for i in range(images.shape[0])
    ]


PassKind = Literal["records", "good_scores"]


@dataclass
class ImageOutcome:
    """One image's result of an evaluation image pass (test records or train/good scores).

    Attributes:
        path: The image file.
        record: Its record (a ``records`` pass), or None.
        score: Its "before" score (a ``good_scores`` pass), or None.
        unreadable: Why the image could not be read, or None.
        refused: Why the detector refused the image, or None.
    """

    path: Path
    record: ImageRecord | None = None
    score: float | None = None
    unreadable: str | None = None
    refused: str | None = None


def record_outcomes(addition: NormalityAddition, paths: Sequence[Path], resize: str) -> list[ImageOutcome]:
    """Records of one batch: load it, one detector + CLIP pass; image by image when the detector refuses the batch.

    Unreadable images come first (as the batch's notes are written), then the loaded ones in order.
    """
    loaded, pixels, failures = load_batch(list(paths), addition.input_size, resize)
    outcomes = [ImageOutcome(f.path, unreadable=f.reason) for f in failures]
    if pixels is None:
        return outcomes
    prepare_batch = getattr(addition.detector, "prepare_batch", None)  # detectors reading maps by file name
    try:
        if prepare_batch is not None:
            prepare_batch(loaded)
        records = compute_records(addition, pixels)
        return outcomes + [ImageOutcome(p, record=r) for p, r in zip(loaded, records, strict=True)]
    except NormaddError:
        for index, path in enumerate(loaded):
            try:
                if prepare_batch is not None:
                    prepare_batch([path])
                outcomes.append(ImageOutcome(path, record=compute_records(addition, pixels[index : index + 1])[0]))
            except NormaddError as error:
                outcomes.append(ImageOutcome(path, refused=str(error)))
    return outcomes


def good_score_outcomes(addition: NormalityAddition, paths: Sequence[Path], resize: str) -> list[ImageOutcome]:
    """"Before" scores of one batch of ``train/good`` images, read from the fp16 maps as test scores are.

    Raises:
        NormaddError: The detector refuses the batch (the class then gets no decisions).
    """
    loaded, pixels, failures = load_batch(list(paths), addition.input_size, resize)
    outcomes = [ImageOutcome(f.path, unreadable=f.reason) for f in failures]
    if pixels is None:
        return outcomes
    prepare_batch = getattr(addition.detector, "prepare_batch", None)
    if prepare_batch is not None:
        prepare_batch(loaded)
    result = detector_only(addition).explain(pixels)
    scores = max_scores(result.before.half().float()).tolist()
    return outcomes + [ImageOutcome(p, score=float(s)) for p, s in zip(loaded, scores, strict=True)]


@dataclass
class PassRequest:
    """One image pass an evaluation needs: a pass kind over some images of one class's line.

    Attributes:
        kind: ``records`` (test images) or ``good_scores`` (train/good images for the threshold).
        config: The class's line.
        paths: The images, in order.
    """

    kind: PassKind
    config: LineConfig
    paths: list[Path]


PassBatch = tuple[int, "list[ImageOutcome] | NormaddError"]


class ImagePass(Protocol):
    """Runs all of an evaluation's image passes elsewhere as one job (Ray: :mod:`normadd.batch.ray_pipeline`).

    For each request it builds the class's line from ``config`` wherever the images are scored
    and yields, batch by batch and in request order, ``(request index, outcomes)``: the
    :class:`ImageOutcome` list :func:`record_outcomes` (``kind="records"``) or
    :func:`good_score_outcomes` (``kind="good_scores"``) gives for each consecutive batch of
    ``batch_size`` paths, or the :class:`~normadd.errors.NormaddError` that batch raised.
    """

    def run_all(self, requests: Sequence[PassRequest], batch_size: int, resize: str) -> Iterator[PassBatch]:
        """The batches of every request, streamed in order."""
        ...


class _PassStream:
    """The batches of one :meth:`ImagePass.run_all`, handed out request by request in request order.

    Batches of a request nobody asked for (its class was skipped on the way) are passed over.
    """

    def __init__(self, batches: Iterator[PassBatch]) -> None:
        self._batches = batches
        self._ahead: PassBatch | None = None

    def take(self, index: int) -> Iterator[ImageOutcome]:
        """The outcomes of request ``index``; raises the NormaddError of a batch that raised one."""
        while True:
            if self._ahead is None:
                self._ahead = next(self._batches, None)
                if self._ahead is None:
                    return
            number, result = self._ahead
            if number > index:
                return
            self._ahead = None
            if number < index:
                continue
            if isinstance(result, NormaddError):
                raise result
            yield from result

    def close(self) -> None:
        """Stop the job (its streaming execution) when the evaluation ends early."""
        close = getattr(self._batches, "close", None)
        if callable(close):
            close()


@dataclass
class _GoodPlan:
    """The train/good images of a class, what the calibration cache already knows, and what is left to score."""

    paths: list[Path]
    digests: list[str]
    known: dict[str, float]
    missing: list[int]
    cache_file: Path


@dataclass
class _PreparedClass:
    """A class up to its image passes: its line, groups, texts, cache state and the passes it needs."""

    test_set: ClassTestSet
    config: LineConfig
    addition: NormalityAddition
    groups: list[AnomalyGroup]
    normalities: list[AddedNormality]
    cache: FeatureCache
    digests: list[str]
    records: list[ImageRecord | None]
    missing: list[int]
    good: _GoodPlan | None
    requests: dict[str, int] = field(default_factory=dict)  # pass kind -> request index in the job


@dataclass
class _ClassMaps:
    """Scores and the 256 × 256 maps kept while one class is scored."""

    scores_before: np.ndarray
    scores_after: np.ndarray  # (N, K)
    scores_several: np.ndarray  # (N, K): every group but k added
    before_maps: Tensor  # (N, 256, 256) fp16
    after_maps: Tensor  # (N, K, 256, 256) fp16
    suppression: dict[tuple[int, int], Tensor]  # (image, group) -> map, only for examples


class Evaluator:
    """Runs the protocol class by class.

    Args:
        settings: What to evaluate.
        progress: Progress display; none when None.
        on_note: Called with each one-line note as it happens.
        build: Builds a class's detector with its normality detector (the factory by default, with
            one :class:`~normadd.backbone.pool.EncoderPool` for the run: each encoder loads once).
        image_pass: Where the image passes run (a Ray cluster); in this process when None. The
            class's line is still built here for the group texts and the scoring from records. The
            passes of every class then run as one job (one model load per worker for the run): every
            class is prepared (line, texts, caches) before the first image pass, and its notes are
            said in class order as the local path says them.
    """

    def __init__(
        self,
        settings: EvaluationSettings,
        progress: ProgressHook | None = None,
        on_note: Callable[[str], None] | None = None,
        build: Callable[[LineConfig, Runtime | None], NormalityAddition] | None = None,
        image_pass: ImagePass | None = None,
    ) -> None:
        if settings.batch_size < 1:
            raise NormaddError("--batch-size must be at least 1")
        self.settings = settings
        self.progress = progress or NoProgress()
        self.on_note = on_note
        # The factory by default: one encoder pool per run (each CLIP backbone loads once for all
        # classes), showing a PatchCore fit (features, then coreset) on the progress display.
        self.encoders = EncoderPool()
        self.build = build or functools.partial(build_addition, progress=self.progress, encoders=self.encoders)
        self.image_pass = image_pass
        self._stream: _PassStream | None = None
        self.notes: list[str] = []
        self.cost = CostCounts()
        self.model_description = ""
        self.random_weights = False

    def note(self, line: str) -> None:
        """Record a one-line note and pass it on."""
        self.notes.append(line)
        if self.on_note is not None:
            self.on_note(line)

    def run(self) -> EvaluationResult:
        """Evaluate every class; unusable classes are noted and skipped.

        Raises:
            NormaddError: Nothing could be evaluated (no dataset, no usable class).
        """
        started = time.perf_counter()
        settings = self.settings
        available = list_classes(settings.data)
        configured = read_groups_file(settings.groups_file) if settings.groups_file else mvtec_groups()
        class_names = settings.classes or available
        evaluations: list[ClassEvaluation] = []
        test_sets: list[ClassTestSet] = []
        for class_name in class_names:
            try:
                test_set = read_class(settings.data, class_name)
            except EvaluationDataError as error:
                self.note(f"skipped class: {error}")
                continue
            for line in test_set.notes:
                self.note(line)
            test_sets.append(test_set)
        if test_sets:  # no readable image at all: say so before any model loads
            first_readable([image.path for test_set in test_sets for image in test_set.images])
        if self.image_pass is None:
            for test_set in test_sets:
                evaluation = self.evaluate_class(test_set, configured)
                if evaluation is not None:
                    evaluations.append(evaluation)
        else:
            evaluations = self._evaluate_in_one_job(test_sets, configured, self.image_pass)
        if not evaluations:
            raise EvaluationDataError(f"no class of {settings.data} could be evaluated (see the notes above)")
        self.cost.seconds = time.perf_counter() - started
        shots = int(getattr(settings.line, "shots", 0) or 0) if settings.line is not None else 0
        return EvaluationResult(
            evaluations, self.notes, self.model_description, settings.detector, self.random_weights, self.cost, shots
        )

    def _normalities(
        self, addition: NormalityAddition, groups: list[AnomalyGroup], class_name: str, note: Callable[[str], None]
    ) -> tuple[list[AnomalyGroup], list[AddedNormality]]:
        kept: list[AnomalyGroup] = []
        normalities: list[AddedNormality] = []
        for group in groups:
            try:
                normalities.append(addition.normality_detector.make_normality(group.text, 1.0, group.name))
            except NormaddError as error:
                note(f"{class_name}: group '{group.name}' skipped: {error}")
                continue
            kept.append(group)
        self.cost.group_texts += len(normalities)
        return kept, normalities

    def evaluate_class(
        self, test_set: ClassTestSet, configured: dict[str, list[AnomalyGroup]] | None
    ) -> ClassEvaluation | None:
        """All measurements of one class, or None (with a note) when it cannot be evaluated."""
        prepared = self._prepare_class(test_set, configured, self.note)
        return None if prepared is None else self._finish_class(prepared)

    def _evaluate_in_one_job(
        self, test_sets: list[ClassTestSet], configured: dict[str, list[AnomalyGroup]] | None, image_pass: ImagePass
    ) -> list[ClassEvaluation]:
        """Every class with the image passes of all of them as one job of ``image_pass``.

        No pass depends on another's results (a class's train/good pass runs whatever its test
        pass gave; it is passed over when the class was skipped), so the job is known up front.
        """
        prepared: list[_PreparedClass | None] = []
        pending: list[list[str]] = []
        requests: list[PassRequest] = []
        for test_set in test_sets:
            notes: list[str] = []
            item = self._prepare_class(test_set, configured, notes.append)
            prepared.append(item)
            pending.append(notes)
            if item is None:
                continue
            missing = [item.test_set.images[i].path for i in item.missing]
            if missing:
                item.requests["records"] = len(requests)
                requests.append(PassRequest("records", item.config, missing))
            if item.good is not None and item.good.missing:
                item.requests["good_scores"] = len(requests)
                good = [item.good.paths[i] for i in item.good.missing]
                requests.append(PassRequest("good_scores", item.config, good))
        evaluations: list[ClassEvaluation] = []
        self._stream = _PassStream(iter(image_pass.run_all(requests, self.settings.batch_size, self.settings.resize)))
        try:
            for item, notes in zip(prepared, pending, strict=True):
                for line in notes:
                    self.note(line)
                evaluation = None if item is None else self._finish_class(item)
                if evaluation is not None:
                    evaluations.append(evaluation)
        finally:
            self._stream.close()
            self._stream = None
        return evaluations

    def _prepare_class(
        self,
        test_set: ClassTestSet,
        configured: dict[str, list[AnomalyGroup]] | None,
        note: Callable[[str], None],
    ) -> _PreparedClass | None:
        """A class up to its image passes; None (with a note) when it cannot be evaluated."""
        name = test_set.name
        groups, group_notes = groups_for_class(test_set, configured)
        for line in group_notes:
            note(line)
        if not groups:
            note(f"skipped class: {name} has no usable group")
            return None
        config = line_config(self.settings, name)
        try:
            addition = self.build(config, self.settings.runtime)
        except (UnknownBackboneError, WeightsNotFoundError, WeightsMismatchError, DeviceError):
            raise  # the same for every class: stop with that one line
        except NormaddError as error:  # e.g. a class without the normal images its detector learns from
            note(f"skipped class: {name}: {error}")
            return None
        encoder = addition.normality_detector.encoder
        self.model_description = addition.detector.description
        self.random_weights = encoder.is_random
        prompts_before = addition.normality_detector.text_embedder.encoded_prompts
        groups, normalities = self._normalities(addition, groups, name, note)
        self.cost.prompts_encoded += addition.normality_detector.text_embedder.encoded_prompts - prompts_before
        if not groups:
            note(f"skipped class: {name} has no usable group")
            return None
        identity = cache_identity(addition, config)
        cache = FeatureCache(identity, enabled=self.settings.use_cache)
        digests = [file_digest(image.path) for image in test_set.images]
        records: list[ImageRecord | None] = [cache.get(digest) for digest in digests]
        missing = [i for i, record in enumerate(records) if record is None]
        good = self._good_plan(identity, name) if self.settings.false_reject is not None else None
        return _PreparedClass(
            test_set, config, addition, groups, normalities, cache, digests, records, missing, good
        )

    def _finish_class(self, prepared: _PreparedClass) -> ClassEvaluation | None:
        """The image passes of a prepared class and all its measurements, or None (with a note)."""
        test_set, addition, cache = prepared.test_set, prepared.addition, prepared.cache
        name, groups, normalities = test_set.name, prepared.groups, prepared.normalities
        images, records = self._records(prepared)
        self.cost.cache_hits += cache.hits
        self.cost.cache_misses += cache.misses
        self.cost.cache_bytes_written += cache.bytes_written
        if records and not self.cost.record_bytes:
            self.cost.record_bytes = FeatureCache.record_size(records[0])
        if not images:
            self.note(f"skipped class: no image of {name} could be read")
            return None
        self.progress.start(f"{name}: {len(groups)} group maps", len(records))
        maps = self._score(addition, records, normalities, examples=self._example_indices(images, groups))
        self.progress.start(f"{name}: metrics", 1 + len(groups))
        defect_types = [image.defect_type for image in images]
        evaluation = ClassEvaluation(name, groups, defect_types, maps.scores_before, maps.scores_after)
        self._protocol_rows(evaluation)
        self._selectivity_rows(evaluation)
        self._several_rows(evaluation, maps)
        self.progress.advance(1)
        self._pixel_rows(evaluation, images, maps)
        evaluation.examples = self._examples(images, groups, maps)
        if prepared.good is not None:
            self._decision_rows(evaluation, prepared)
        return evaluation

    def _good_plan(self, identity: list[object], class_name: str) -> _GoodPlan:
        """The class's ``train/good`` images and the "before" scores the calibration cache already has."""
        folder = self.settings.data / class_name / "train" / "good"
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        key = cache_key(CALIBRATION_CACHE_VERSION, identity)
        cache_file = cache_dir("calibration-scores") / f"{key}.json"
        known: dict[str, float] = {}
        if paths and self.settings.use_cache and cache_file.is_file():
            try:
                known = {str(k): float(v) for k, v in json.loads(cache_file.read_text()).items()}
            except (ValueError, AttributeError):
                known = {}
        digests = [file_digest(path) for path in paths]
        missing = [i for i, digest in enumerate(digests) if digest not in known]
        return _GoodPlan(paths, digests, known, missing, cache_file)

    def _good_scores(self, prepared: _PreparedClass) -> list[float]:
        """"Before" scores of the class's ``train/good`` images, scored as the test images are.

        Test scores are read from the fp16 256 × 256 maps of the feature cache, so these are too:
        threshold and test scores share one scale. Scores are cached per image (a few bytes).
        """
        assert prepared.good is not None
        class_name = prepared.test_set.name
        plan = prepared.good
        paths, digests, known, missing, cache_file = plan.paths, plan.digests, plan.known, plan.missing, plan.cache_file
        if not paths:
            return []
        self.progress.start(f"{class_name}: train/good for the threshold", len(paths))
        self.progress.advance(len(paths) - len(missing))
        by_path = {paths[i]: digests[i] for i in missing}
        for outcome in self._outcomes("good_scores", prepared, [paths[i] for i in missing]):
            if outcome.unreadable is not None:
                self.note(f"{class_name}: train image skipped: {outcome.unreadable}")
            elif outcome.score is not None:
                known[by_path[outcome.path]] = outcome.score
                self.cost.detector_passes += 1
                self.cost.clip_passes += 1
                self.cost.calibration_images += 1
            self.progress.advance(1)
        if self.settings.use_cache and missing:
            atomic_write_bytes(cache_file, json.dumps(known, sort_keys=True).encode())
        return [known[d] for d in digests if d in known]

    def _decision_rows(self, evaluation: ClassEvaluation, prepared: _PreparedClass) -> None:
        """Calibrate the class's threshold on train/good and count each group's decisions at it."""
        assert self.settings.false_reject is not None
        try:
            good_scores = self._good_scores(prepared)
        except NormaddError as error:
            self.note(f"{evaluation.name}: no decisions: train/good could not be scored ({error})")
            return
        if not good_scores:
            self.note(f"{evaluation.name}: no decisions: no readable image in {evaluation.name}/train/good")
            return
        calibration = calibrate_false_reject(good_scores, self.settings.false_reject)
        if not calibration.resolvable:
            self.note(
                f"{evaluation.name}: {len(good_scores)} train/good images cannot resolve a "
                f"{self.settings.false_reject:g} false-reject rate: the threshold is their highest score"
            )
        for k, group in enumerate(evaluation.groups):
            counts = group_decision_counts(
                evaluation.defect_types,
                group.defect_types,
                evaluation.scores_before,
                evaluation.scores_after[:, k],
                calibration.threshold,
            )
            evaluation.decisions.append(
                DecisionResult(
                    evaluation.name,
                    group.name,
                    calibration.threshold,
                    self.settings.false_reject,
                    len(good_scores),
                    **dataclasses.asdict(counts),
                )
            )

    def _outcomes(self, kind: PassKind, prepared: _PreparedClass, paths: Sequence[Path]) -> Iterator[ImageOutcome]:
        """One outcome per path, in order: from the run's image-pass job (Ray), else batch by batch here."""
        if not paths:
            return
        if self._stream is not None:
            if kind in prepared.requests:
                yield from self._stream.take(prepared.requests[kind])
            return
        batch_size, resize = self.settings.batch_size, self.settings.resize
        compute = record_outcomes if kind == "records" else good_score_outcomes
        for start in range(0, len(paths), batch_size):
            yield from compute(prepared.addition, paths[start : start + batch_size], resize)

    def _records(self, prepared: _PreparedClass) -> tuple[list[TestImage], list[ImageRecord]]:
        images, cache, class_name = prepared.test_set.images, prepared.cache, prepared.test_set.name
        self.progress.start(f"{class_name}: detector + CLIP", len(images))
        digests, records, missing = prepared.digests, list(prepared.records), prepared.missing
        self.progress.advance(sum(r is not None for r in records))
        by_path = {images[i].path: i for i in missing}
        unreadable: set[int] = set()
        for outcome in self._outcomes("records", prepared, [images[i].path for i in missing]):
            index = by_path[outcome.path]
            if outcome.unreadable is not None:
                self.note(f"{class_name}: image skipped: {outcome.unreadable}")
                unreadable.add(index)
            else:
                self.cost.detector_passes += 1
                self.cost.clip_passes += 1
                if outcome.refused is not None:
                    self.note(f"{class_name}: image skipped: {outcome.path}: {outcome.refused}")
                elif outcome.record is not None:
                    records[index] = outcome.record
                    cache.put(digests[index], outcome.record)
            self.progress.advance(1)
        kept = [i for i in range(len(images)) if i not in unreadable and records[i] is not None]
        self.cost.images += len(kept)
        return [images[i] for i in kept], [records[i] for i in kept]  # type: ignore[misc]

    @torch.inference_mode()
    def _score(
        self,
        addition: NormalityAddition,
        records: list[ImageRecord],
        normalities: list[AddedNormality],
        examples: set[tuple[int, int]],
    ) -> _ClassMaps:
        normality_detector = addition.normality_detector
        device = normality_detector.encoder.runtime.device
        size = normality_detector.size
        count, groups = len(records), len(normalities)
        full_strength = torch.ones(groups)
        before_maps = torch.stack([r.before_map for r in records])
        maps = _ClassMaps(
            # "before" is scored on the same stored 256 x 256 map that "after" multiplies, so an
            # addition that suppresses nothing leaves every score as it was (paper protocol, step 5).
            scores_before=max_scores(before_maps.float()).double().numpy(),
            scores_after=np.zeros((count, groups)),
            scores_several=np.zeros((count, groups)),
            before_maps=before_maps,
            after_maps=torch.empty(count, groups, size, size, dtype=torch.float16),
            suppression={},
        )
        for start in range(0, count, self.settings.batch_size):
            chunk = records[start : start + self.settings.batch_size]
            tokens = torch.stack([r.tokens for r in chunk]).to(device).float()  # (B, L, N, D)
            projected = list(tokens.unbind(dim=1))
            suppression = normality_detector.suppression_from_projected(projected, chunk[0].grid_size, normalities)
            suppression = suppression.float().cpu()
            before = maps.before_maps[start : start + len(chunk)].float()
            for k in range(groups):
                after = before * keep_factor(suppression[:, k : k + 1], full_strength[:1])  # paper: A ⊙ (1 − A_sup)
                maps.after_maps[start : start + len(chunk), k] = after.half()
                maps.scores_after[start : start + len(chunk), k] = max_scores(after).numpy()
                if groups >= MIN_GROUPS_FOR_SEVERAL:
                    others = [j for j in range(groups) if j != k]
                    keep = keep_factor(suppression[:, others], full_strength[: len(others)])
                    maps.scores_several[start : start + len(chunk), k] = max_scores(before * keep).numpy()
                for i in range(len(chunk)):
                    if (start + i, k) in examples:
                        maps.suppression[(start + i, k)] = suppression[i, k].clone()
            self.progress.advance(len(chunk))
        return maps

    def _protocol_rows(self, evaluation: ClassEvaluation) -> None:
        detector_is_papers = self.settings.detector in PAPER_DETECTORS
        for k, group in enumerate(evaluation.groups):
            labels = relabel(evaluation.defect_types, group.defect_types)
            before = metrics.image_auroc(labels, evaluation.scores_before)
            after = metrics.image_auroc(labels, evaluation.scores_after[:, k])
            if before is None:
                self.note(
                    f"{evaluation.name}: group '{group.name}' leaves one label only (no other defect type): no AUROC"
                )
            reported = paper.paper_row(evaluation.name, group.name, group.defect_types) if detector_is_papers else None
            evaluation.rows.append(
                GroupResult(
                    evaluation.name,
                    group.name,
                    group.defect_types,
                    _percent(before),
                    _percent(after),
                    reported.auroc_before if reported else None,
                    reported.auroc_after if reported else None,
                )
            )

    def _selectivity_rows(self, evaluation: ClassEvaluation) -> None:
        for k, added in enumerate(evaluation.groups):
            for other in evaluation.groups:
                if other is added:
                    continue
                keep, labels = selectivity_subset(evaluation.defect_types, other.defect_types)
                before = metrics.image_auroc(labels, evaluation.scores_before[keep])
                after = metrics.image_auroc(labels, evaluation.scores_after[keep, k])
                evaluation.selectivity.append(
                    SelectivityResult(evaluation.name, added.name, other.name, _percent(before), _percent(after))
                )

    def _several_rows(self, evaluation: ClassEvaluation, maps: _ClassMaps) -> None:
        if len(evaluation.groups) < MIN_GROUPS_FOR_SEVERAL:
            return
        for k, held_out in enumerate(evaluation.groups):
            added = [g for g in evaluation.groups if g is not held_out]
            labels = relabel(evaluation.defect_types, {t for g in added for t in g.defect_types})
            evaluation.several.append(
                SeveralResult(
                    evaluation.name,
                    held_out.name,
                    tuple(g.name for g in added),
                    _percent(metrics.image_auroc(labels, evaluation.scores_before)),
                    _percent(metrics.image_auroc(labels, maps.scores_several[:, k])),
                )
            )

    def _masks(self, images: list[TestImage], size: int, class_name: str) -> list[np.ndarray | None]:
        masks: list[np.ndarray | None] = []
        bad: list[str] = []
        for image in images:
            if image.is_good:
                masks.append(np.zeros((size, size), dtype=bool))
            elif image.mask_path is None:
                masks.append(None)  # already noted when the class was read
            else:
                try:
                    masks.append(load_mask(image.mask_path, image.path, size, self.settings.resize))
                except EvaluationDataError as error:
                    masks.append(None)
                    bad.append(str(error))
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            self.note(f"{class_name}: {bad[0]}{more}: left out of the pixel metrics")
        return masks

    def _pixel_rows(self, evaluation: ClassEvaluation, images: list[TestImage], maps: _ClassMaps) -> None:
        size = maps.before_maps.shape[-1]
        masks = self._masks(images, size, evaluation.name)
        with_mask = {i for i, m in enumerate(masks) if m is not None}
        for k, group in enumerate(evaluation.groups):
            subset = [i for i in still_anomalous_subset(evaluation.defect_types, group.defect_types) if i in with_mask]
            if not subset:
                continue
            truth = np.stack([masks[i] for i in subset])  # type: ignore[misc]
            # float16 maps as stored: ranked without a sort (metrics.score_ranks); regions labelled once.
            weights = metrics.region_weights(truth)
            before_auroc, before_aupro = metrics.pixel_metrics(truth, maps.before_maps[subset].numpy(), weights)
            after_auroc, after_aupro = metrics.pixel_metrics(truth, maps.after_maps[subset, k].numpy(), weights)
            evaluation.pixel.append(
                PixelResult(
                    evaluation.name,
                    group.name,
                    len(subset),
                    _percent(before_auroc),
                    _percent(after_auroc),
                    _percent(before_aupro),
                    _percent(after_aupro),
                )
            )
            self.progress.advance(1)

    @staticmethod
    def _example_indices(images: list[TestImage], groups: list[AnomalyGroup]) -> set[tuple[int, int]]:
        """Per group: its first image (should be suppressed) and the first defect of another type (should stay)."""
        chosen: set[tuple[int, int]] = set()
        for k, group in enumerate(groups):
            inside = next((i for i, im in enumerate(images) if im.defect_type in group.defect_types), None)
            outside = next(
                (i for i, im in enumerate(images) if not im.is_good and im.defect_type not in group.defect_types), None
            )
            chosen |= {(i, k) for i in (inside, outside) if i is not None}
        return chosen

    def _examples(self, images: list[TestImage], groups: list[AnomalyGroup], maps: _ClassMaps) -> list[Example]:
        examples: list[Example] = []
        size = maps.before_maps.shape[-1]
        for (i, k), suppression in sorted(maps.suppression.items(), key=lambda item: (item[0][1], item[0][0])):
            image = images[i]
            mask = None
            if image.mask_path is not None:
                try:
                    mask = load_mask(image.mask_path, image.path, size, self.settings.resize)
                except EvaluationDataError:
                    mask = None
            examples.append(
                Example(
                    image.path,
                    image.defect_type,
                    groups[k].name,
                    mask,
                    maps.before_maps[i].float().numpy(),
                    maps.after_maps[i, k].float().numpy(),
                    suppression.numpy(),
                    self.settings.resize,
                )
            )
        return examples


def evaluate(
    settings: EvaluationSettings,
    progress: ProgressHook | None = None,
    on_note: Callable[[str], None] | None = None,
    image_pass: ImagePass | None = None,
) -> EvaluationResult:
    """Evaluate ``settings.data`` with the paper's protocol and our extensions (see module doc).

    With ``image_pass`` (a Ray cluster) the image passes run there; everything else here.
    """
    return Evaluator(settings, progress, on_note, image_pass=image_pass).run()
