"""A product line's detector rebuilt from the registry, and changes applied to both at once.

The registry is the source of truth: a :class:`LineModel` loads the line's settings and active
normalities, reuses each cached ``f_add`` when it was computed by the same encoder (backbone and
weights fingerprint) and recomputes it otherwise. A visual normality is stored as its example
memory (safetensors bytes) with the SHA-256 of every example image and mask; it cannot be
recomputed without the images, so a line whose encoder changed refuses to load it, naming the fix.
Adding or removing a normality writes the registry first, so a refused or failed write leaves the
running model unchanged too.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from normadd.backbone.clip_encoder import ClipEncoder, ClipFeatures
from normadd.backbone.pool import EncoderPool
from normadd.config import LineConfig
from normadd.decisions.policy import DecisionPolicy, ThresholdSetting, limits_from_mapping, setting_limits
from normadd.errors import NormaddError
from normadd.factory import build_addition
from normadd.normality.addition import AdditionResult, NormalityAddition
from normadd.normality.text_normality import AddedNormality
from normadd.normality.visual import PatchMemory
from normadd.registry.errors import DuplicateNormalityError
from normadd.registry.store import LineRecord, NormalityRecord, Registry, ThresholdRecord, utc_now
from normadd.runtime import Runtime

NAMED_SETTINGS = ("class_name", "detector", "backbone", "weights", "projections", "layers", "phrase_generator")
# active normalities live in their own table, the threshold in its own (issue 11)
NOT_STORED = ("normalities", "examples", "threshold", "threshold_scale")
# Kept only when set otherwise, so lines stored before these settings existed still match their config.
STORED_WHEN_SET = {"approval": "none", "approval_expires_hours": 72.0}


def line_config(line: LineRecord) -> LineConfig:
    """The :class:`LineConfig` of a stored line (without its normalities)."""
    data = {**line.settings, **{key: getattr(line, key) for key in NAMED_SETTINGS}}
    known = set(LineConfig.__dataclass_fields__)
    return LineConfig.from_dict({k: v for k, v in data.items() if k in known}, f"line '{line.name}'")


def line_record(name: str, config: LineConfig) -> LineRecord:
    """The :class:`LineRecord` a config describes, under ``name``."""
    data = {k: v for k, v in asdict(config).items() if k not in NOT_STORED and v is not None}
    data = {k: v for k, v in data.items() if k not in STORED_WHEN_SET or v != STORED_WHEN_SET[k]}
    named = {key: data.pop(key) for key in NAMED_SETTINGS if key in data}
    return LineRecord(name=name, **named, settings=data)


def embedding_to_bytes(embedding: Tensor) -> bytes:
    """``f_add`` as little-endian float32 bytes."""
    return embedding.detach().float().cpu().numpy().astype("<f4").tobytes()


def embedding_from_bytes(data: bytes) -> Tensor:
    """The tensor :func:`embedding_to_bytes` wrote."""
    return torch.from_numpy(np.frombuffer(data, dtype="<f4").copy())


def memory_to_bytes(memory: PatchMemory) -> bytes:
    """A visual normality's example memory as safetensors bytes (features per layer, floors, layers)."""
    tensors = {f"features.{i}": features.float().contiguous() for i, features in enumerate(memory.features)}
    tensors["floors"] = torch.tensor(memory.floors, dtype=torch.float64)
    tensors["layers"] = torch.tensor(memory.layers, dtype=torch.int64)
    return save_tensors(tensors)


def memory_from_bytes(data: bytes, encoder_identity: str, sources: list[str]) -> PatchMemory:
    """The memory :func:`memory_to_bytes` wrote."""
    tensors = load_tensors(data)
    layers = tuple(int(x) for x in tensors["layers"].tolist())
    features = [tensors[f"features.{i}"] for i in range(len(layers))]
    return PatchMemory(features, [float(x) for x in tensors["floors"].tolist()], layers, encoder_identity, sources)


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def example_sources(
    images: Sequence[str | Path], masks: Sequence[str | Path] | None, names: Sequence[str] | None = None
) -> list[dict[str, str | None]]:
    """Name and SHA-256 of each example image and of its mask (what the registry and the audit keep)."""
    shown = list(names) if names is not None else [Path(p).name for p in images]
    return [
        {
            "image": shown[index],
            "sha256": _sha256(image),
            "mask_sha256": _sha256(masks[index]) if masks else None,
        }
        for index, image in enumerate(images)
    ]


class LineModel:
    """One line's :class:`NormalityAddition`, kept in step with the registry.

    Build it with :meth:`load`. ``explain``, ``add`` and ``remove`` hold one lock, so a forward
    pass never sees a half-changed set of normalities. When ``explain`` is given the registry it
    first picks up changes other processes made (e.g. ``normadd normality add`` on the CLI).
    """

    def __init__(self, line: LineRecord, addition: NormalityAddition) -> None:
        self.line = line
        self.addition = addition
        self.revision = -1
        self.clock = utc_now
        self.until: dict[str, datetime] = {}  # active normalities with an end, by name
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, registry: Registry, name: str, runtime: Runtime | None = None, encoders: EncoderPool | None = None
    ) -> LineModel:
        """Build the line's detector and restore its active normalities.

        With ``encoders``, a CLIP encoder another line already built (same backbone, weights,
        layers, image size, device and precision) is reused instead of loaded again.

        Raises:
            LineNotFoundError: No such line.
            NormaddError: The line's backbone or weights cannot be loaded.
        """
        line = registry.line(name)
        model = cls(line, build_addition(line_config(line), runtime, encoders=encoders))
        model.clock = registry.clock
        model._restore(registry)
        return model

    def _restore(self, registry: Registry) -> None:
        """Make the active normalities those of the registry (called with the lock held or before sharing)."""
        self.revision = registry.revision(self.line.name)  # read first: a later change is picked up next time
        detector = self.addition.normality_detector
        identity = detector.encoder.identity
        current = self.addition.normalities
        restored: dict[str, AddedNormality] = {}
        for stored in registry.normalities(self.line.name):
            known = current.get(stored.name)
            if stored.kind == "visual":
                restored[stored.name] = self._visual(stored, identity)
            elif known is not None and (known.text, known.strength) == (stored.text, stored.strength):
                restored[stored.name] = known
            elif stored.embedding is not None and stored.embedding_backbone == identity:
                embedding = embedding_from_bytes(stored.embedding)
                restored[stored.name] = AddedNormality(
                    stored.name, stored.text, stored.strength, stored.phrases, embedding
                )
            else:  # computed with other weights: the phrases are re-encoded by this encoder
                restored[stored.name] = detector.make_normality(stored.text, stored.strength, stored.name)
        current.clear()
        current.update(restored)
        self.until = {
            stored.name: datetime.fromisoformat(stored.until)
            for stored in registry.normalities(self.line.name)
            if stored.until is not None
        }

    def _visual(self, stored: NormalityRecord, identity: str) -> AddedNormality:
        """A stored visual normality, usable only with the encoder its memory came from."""
        if stored.memory is None or stored.embedding_backbone != identity:
            raise NormaddError(
                f"visual normality '{stored.name}' of line '{self.line.name}' was taken with another encoder "
                f"({stored.embedding_backbone}) than the line now loads ({identity}): remove it "
                f"(normadd normality remove {self.line.name} '{stored.name}') and add its examples again"
            )
        names = [str(source.get("image", "")) for source in stored.sources]
        memory = memory_from_bytes(stored.memory, identity, names)
        return AddedNormality(stored.name, stored.text, stored.strength, kind="visual", memory=memory)

    @property
    def input_size(self) -> int:
        """Side of the images the detector takes."""
        return self.addition.input_size

    @property
    def description(self) -> str:
        """The detector and its active normalities in one line."""
        return self.addition.description

    @property
    def is_random(self) -> bool:
        """True when the backbone has random weights (maps are not meaningful)."""
        return self.addition.normality_detector.encoder.is_random

    @property
    def features_identity(self) -> str:
        """Names what retained features depend on: encoder, weights, detector and projections."""
        detector = self.addition.normality_detector
        return f"{detector.encoder.identity}|{self.addition.detector.description}|{detector.projections.description}"

    @property
    def encoder(self) -> ClipEncoder:
        """The CLIP encoder of the normality detector (the one lines can share)."""
        return self.addition.normality_detector.encoder

    def explain(
        self,
        images: Tensor,
        registry: Registry | None = None,
        keep_projected: bool = False,
        features: ClipFeatures | None = None,
    ) -> AdditionResult:
        """Maps and scores before and after the active normalities (those of ``registry`` when given).

        A normality whose ``until`` has passed (by the registry's clock) does not apply; with the
        registry given, the first inspection after it marks it expired in the audit log.
        ``features``: this line's :attr:`encoder` features of ``images``, when a shared pass already ran.
        """
        with self._lock:
            # Read per batch, before the pass: a change committed by any process (another replica,
            # the CLI) before this point applies to this batch. This is the staleness bound.
            if registry is not None:
                self._catch_up(registry)  # first: another process may have added one whose until has passed
            self._expire(registry)
            return self.addition.explain(images, keep_projected=keep_projected, features=features)

    def refresh(self, registry: Registry) -> None:
        """Pick up normality changes other processes made (without expiring anything: that is an inspection's)."""
        with self._lock:
            self._catch_up(registry)

    def _catch_up(self, registry: Registry) -> None:
        """Reload the normalities when another process (a replica, the CLI) changed them (lock held)."""
        if registry.revision(self.line.name) != self.revision:
            self._restore(registry)

    def _expire(self, registry: Registry | None) -> None:
        """Stop applying normalities whose ``until`` has passed (called with the lock held)."""
        if not self.until or min(self.until.values()) > self.clock():
            return
        if registry is not None:
            registry.expire_due(self.line.name)  # audited, then reloaded without them
            self._restore(registry)
            return
        now = self.clock()
        for name in [name for name, until in self.until.items() if until <= now]:
            self.addition.normalities.pop(name, None)
        # kept in self.until, and the revision forgotten: the next inspection with the registry
        # still writes the expiry to the audit log and reloads the normalities from it
        self.revision = -1

    def policy(self, registry: Registry) -> DecisionPolicy:
        """The line's decision policy as the registry holds it now (threshold, limits, score scale).

        Raises:
            DecisionError: Stored limits that cannot be used (e.g. a region mask that is gone).
        """
        stored = registry.threshold(self.line.name)
        threshold = None if stored is None else ThresholdSetting(stored.value, stored.scale, stored.method)
        limits = {n.name: n.limits for n in registry.normalities(self.line.name) if n.limits}
        return DecisionPolicy.from_config(line_config(self.line), threshold, limits)

    def add(
        self,
        registry: Registry,
        text: str,
        strength: float,
        who: str,
        why: str = "",
        name: str | None = None,
        limits: dict[str, object] | None = None,
        state: str = "active",
        until: str | None = None,
    ) -> NormalityRecord:
        """Compute a normality's phrases and ``f_add``, store it, then make it active here.

        Args:
            registry: The registry to store it in.
            text: The defect text.
            strength: s in [0, 1].
            who: Who adds it (audit log).
            why: Why (audit log).
            name: Key (default: the text).
            limits: Acceptance limits (``max_area``, ``max_length``, ``region``), or None.
            state: ``active`` (applies now) or ``staged`` (stored and previewable; applies once activated).
            until: ISO time (UTC) after which it stops applying, or None.

        Raises:
            InvalidTextError: Empty or malformed text.
            ValueError: Strength outside [0, 1], an unknown state or an ``until`` that has passed.
            DuplicateNormalityError: Already active or staged on this line.
            DecisionError: Bad limits (checked before anything is stored).
        """
        with self._lock:
            self._catch_up(registry)  # the duplicate check below is against the registry's set, not a stale one
            normality, record = self._prepare(text, strength, name, limits, state, until)
            stored = registry.add_normality(self.line.name, record, who, why)
            if state == "active":
                self.addition.normalities[normality.name] = normality
                if until is not None:
                    self.until[normality.name] = datetime.fromisoformat(until)
            return stored

    def activate(self, registry: Registry, name: str, who: str, why: str = "") -> NormalityRecord:
        """Make a staged normality apply: in the registry, then here.

        Raises:
            NormalityNotFoundError: No such normality on this line.
            RegistryError: Already active, expired, or its ``until`` has passed.
        """
        with self._lock:
            activated = registry.activate_normality(self.line.name, name, who, why)
            self._restore(registry)
            return activated

    def add_example(
        self,
        registry: Registry,
        images: Sequence[str | Path],
        masks: Sequence[str | Path] | None,
        strength: float,
        who: str,
        why: str = "",
        name: str | None = None,
        source_names: Sequence[str] | None = None,
    ) -> NormalityRecord:
        """Build a visual normality from example images (and masks), store it, then make it active here.

        Args:
            registry: Where it is stored and audited.
            images: Example image files.
            masks: One mask file per image, or None (whole images).
            strength: s in [0, 1].
            who: Who adds it.
            why: Reason, kept in the audit log.
            name: Key to remove it by; ``example:<first image>`` when None.
            source_names: Names to keep for the images (e.g. upload names) instead of the file names.

        Raises:
            ImageLoadError: An unreadable image.
            InvalidMaskError: A mask of another size than its image, or an empty mask.
            ValueError: Strength outside [0, 1].
            DuplicateNormalityError: Already active on this line.
        """
        with self._lock:
            self._catch_up(registry)
            normality, record = self._prepare_example(images, masks, strength, name, source_names)
            stored = registry.add_normality(self.line.name, record, who, why)
            self.addition.normalities[normality.name] = normality
            return stored

    def prepare_example(
        self,
        images: Sequence[str | Path],
        masks: Sequence[str | Path] | None,
        strength: float,
        name: str | None = None,
        source_names: Sequence[str] | None = None,
    ) -> NormalityRecord:
        """The record :meth:`add_example` would store (example memory computed), without storing it.

        A change waiting for approval holds this record, so the approver approves exactly the
        memory and image hashes that were shown (the images themselves are not kept).

        Raises:
            ImageLoadError: An unreadable image.
            InvalidMaskError: A mask of another size than its image, or an empty mask.
            ValueError: Strength outside [0, 1].
            DuplicateNormalityError: Already active on this line.
        """
        with self._lock:
            return self._prepare_example(images, masks, strength, name, source_names)[1]

    def _prepare_example(
        self,
        images: Sequence[str | Path],
        masks: Sequence[str | Path] | None,
        strength: float,
        name: str | None,
        source_names: Sequence[str] | None,
    ) -> tuple[AddedNormality, NormalityRecord]:
        detector = self.addition.normality_detector
        normality = detector.make_example_normality(list(images), list(masks) if masks else None, strength, name)
        assert normality.memory is not None
        sources = example_sources(images, masks, source_names)
        if source_names is not None:  # name it after what the user sent, never after a temporary file
            shown = [str(source["image"]) for source in sources]
            normality.memory.sources = shown
            normality.text = ("examples " + ", ".join(shown))[:120]
            if name is None:
                extra = f"+{len(shown) - 1}" if len(shown) > 1 else ""
                normality.name = f"example:{Path(shown[0]).stem}{extra}"
        if normality.name in self.addition.normalities:
            raise DuplicateNormalityError(
                f"normality '{normality.name}' is already active on line '{self.line.name}': "
                "remove it first to change it"
            )
        record = NormalityRecord(
            name=normality.name,
            text=normality.text,
            strength=normality.strength,
            embedding_backbone=detector.encoder.identity,
            kind="visual",
            memory=memory_to_bytes(normality.memory),
            sources=sources,
        )
        return normality, record

    def prepare(
        self,
        text: str,
        strength: float,
        name: str | None = None,
        limits: dict[str, object] | None = None,
        state: str = "active",
        until: str | None = None,
    ) -> NormalityRecord:
        """The record :meth:`add` would store (phrases and ``f_add`` computed), without storing it.

        A change waiting for approval holds this record, so the approver sees the exact phrases,
        limits, state and end.

        Raises:
            InvalidTextError: Empty or malformed text.
            ValueError: Strength outside [0, 1].
            DuplicateNormalityError: Already active on this line.
            DecisionError: Bad limits.
        """
        with self._lock:
            return self._prepare(text, strength, name, limits, state, until)[1]

    def _prepare(
        self,
        text: str,
        strength: float,
        name: str | None,
        limits: dict[str, object] | None = None,
        state: str = "active",
        until: str | None = None,
    ) -> tuple[AddedNormality, NormalityRecord]:
        limits = {k: v for k, v in (limits or {}).items() if v is not None} or None
        if limits:  # checked before the phrases are encoded
            checked = limits_from_mapping(name or text, limits)
            checked.check_units(line_config(self.line).pixel_size_mm, name or text)
        normality = self.addition.normality_detector.make_normality(text, strength, name)
        if normality.name in self.addition.normalities:
            raise DuplicateNormalityError(
                f"normality '{normality.name}' is already active on line '{self.line.name}': "
                "remove it first to change it"
            )
        assert normality.embedding is not None
        record = NormalityRecord(
            name=normality.name,
            text=normality.text,
            strength=normality.strength,
            phrases=list(normality.phrases),
            embedding=embedding_to_bytes(normality.embedding),
            embedding_backbone=self.addition.normality_detector.encoder.identity,
            state=state,
            until=until,
            limits=limits,
        )
        return normality, record

    def remove(self, registry: Registry, name: str, who: str, why: str = "") -> NormalityRecord:
        """Deactivate a normality in the registry, then here.

        Raises:
            NormalityNotFoundError: Not active on this line.
        """
        with self._lock:
            removed = registry.remove_normality(self.line.name, name, who, why)
            self.addition.normalities.pop(name, None)
            self.until.pop(name, None)
            return removed

    def active(self) -> list[dict[str, object]]:
        """Name and strength of each active normality (what an inspection record keeps)."""
        return [{"name": n.name, "strength": n.strength} for n in self.addition.normalities.values()]


def encode_together(models: Sequence[LineModel], images: Sequence[Tensor]) -> list[ClipFeatures]:
    """One pass of the encoder several lines share for all their images; each line's rows of it.

    Args:
        models: Lines whose detector reads the normality detector's CLIP pass
            (``addition.shares_clip_pass``), all on one encoder object.
        images: One (B_i, 3, S, S) batch per line, at the encoder's run size.

    Raises:
        ValueError: Lines on different encoders, or a line whose detector does not read the shared pass.
    """
    if not models:
        return []
    encoder = models[0].encoder
    for model in models:
        if model.encoder is not encoder or not model.addition.shares_clip_pass:
            raise ValueError(f"line '{model.line.name}' does not read the shared encoder's pass")
    with torch.inference_mode():
        features = encoder.encode_images(encoder.preprocess(torch.cat(list(images))))
    bounds = np.cumsum([0, *(int(part.shape[0]) for part in images)]).tolist()
    return [features.rows(start, stop) for start, stop in itertools.pairwise(bounds)]


def explain_lines(
    models: Sequence[LineModel],
    images: Sequence[Tensor],
    registry: Registry | None = None,
    keep_projected: Sequence[bool] | None = None,
) -> list[AdditionResult]:
    """Inspect the images of several lines that share one encoder with one image-encoder pass.

    The images of every line go through the shared CLIP encoder together
    (:func:`encode_together`); then each line's own detector and normality heads read its rows
    of the features (:meth:`LineModel.explain`), so each result is the one the line would give
    on its own images alone.

    Args:
        models: Lines on one encoder whose detector reads its pass (see :func:`encode_together`).
        images: One (B_i, 3, S, S) batch per line, at the encoder's run size.
        registry: Passed to each line's :meth:`LineModel.explain` (picks up changes, expiries).
        keep_projected: Per line, whether to return its projected tokens (default: none).

    Raises:
        ValueError: Lines on different encoders, or a line whose detector does not read the shared pass.
    """
    keep = list(keep_projected) if keep_projected is not None else [False] * len(models)
    features = encode_together(models, images)
    return [
        model.explain(part, registry, keeps, features=rows)
        for model, part, keeps, rows in zip(models, images, keep, features, strict=True)
    ]


def create_line(
    registry: Registry,
    name: str,
    config: LineConfig,
    who: str,
    why: str = "",
    runtime: Runtime | None = None,
    encoders: EncoderPool | None = None,
) -> LineModel | None:
    """Create a line from a config; its configured normalities, text and visual, become active (and audited).

    ``encoders``: the service's pool, so a line created at start-up shares an encoder already loaded.

    Returns:
        The loaded model when the config had normalities (it was needed to encode them), else None.
    """
    policy = DecisionPolicy.from_config(config)  # bad limits or region masks: refused before anything is stored
    registry.create_line(line_record(name, config), who, why)
    if config.threshold is not None:
        # a bare YAML threshold is meant for the config it is in: it gets that config's score scale
        scale = config.threshold_scale if config.threshold_scale is not None else policy.scale
        record = ThresholdRecord(config.threshold, scale, "config")
        registry.set_threshold(name, record, who, why or "from the line config")
    if not config.normalities and not config.examples:
        return None
    model = LineModel.load(registry, name, runtime, encoders)
    for setting in config.normalities:
        model.add(
            registry,
            setting.text,
            setting.strength,
            who,
            why or "from the line config",
            setting.name,
            setting_limits(setting),
        )
    for example in config.examples:
        model.add_example(
            registry, example.images, example.masks, example.strength, who, why or "from the line config", example.name
        )
    return model
