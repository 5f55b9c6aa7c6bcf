"""A product line's detector rebuilt from the registry, and changes applied to both at once.

The registry is the source of truth: a :class:`LineModel` loads the line's settings and active
normalities, reuses each cached ``f_add`` when it was computed by the same encoder (backbone and
weights fingerprint) and recomputes it otherwise. Adding or removing a normality writes the
registry first, so a refused or failed write leaves the running model unchanged too.
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from datetime import datetime

import numpy as np
import torch
from torch import Tensor

from normadd.config import LineConfig
from normadd.decisions.policy import DecisionPolicy, ThresholdSetting, limits_from_mapping, setting_limits
from normadd.factory import build_addition
from normadd.normality.addition import AdditionResult, NormalityAddition
from normadd.normality.text_normality import AddedNormality
from normadd.registry.errors import DuplicateNormalityError
from normadd.registry.store import LineRecord, NormalityRecord, Registry, ThresholdRecord, utc_now
from normadd.runtime import Runtime

NAMED_SETTINGS = ("class_name", "detector", "backbone", "weights", "projections", "layers", "phrase_generator")
# active normalities live in their own table, the threshold in its own (issue 11)
NOT_STORED = ("normalities", "examples", "threshold", "threshold_scale")


def line_config(line: LineRecord) -> LineConfig:
    """The :class:`LineConfig` of a stored line (without its normalities)."""
    data = {**line.settings, **{key: getattr(line, key) for key in NAMED_SETTINGS}}
    known = set(LineConfig.__dataclass_fields__)
    return LineConfig.from_dict({k: v for k, v in data.items() if k in known}, f"line '{line.name}'")


def line_record(name: str, config: LineConfig) -> LineRecord:
    """The :class:`LineRecord` a config describes, under ``name``."""
    data = {k: v for k, v in asdict(config).items() if k not in NOT_STORED and v is not None}
    named = {key: data.pop(key) for key in NAMED_SETTINGS if key in data}
    return LineRecord(name=name, **named, settings=data)


def embedding_to_bytes(embedding: Tensor) -> bytes:
    """``f_add`` as little-endian float32 bytes."""
    return embedding.detach().float().cpu().numpy().astype("<f4").tobytes()


def embedding_from_bytes(data: bytes) -> Tensor:
    """The tensor :func:`embedding_to_bytes` wrote."""
    return torch.from_numpy(np.frombuffer(data, dtype="<f4").copy())


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
    def load(cls, registry: Registry, name: str, runtime: Runtime | None = None) -> LineModel:
        """Build the line's detector and restore its active normalities.

        Raises:
            LineNotFoundError: No such line.
            NormaddError: The line's backbone or weights cannot be loaded.
        """
        line = registry.line(name)
        model = cls(line, build_addition(line_config(line), runtime))
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
            if known is not None and (known.text, known.strength) == (stored.text, stored.strength):
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

    @property
    def input_size(self) -> int:
        """Side of the images the detector takes."""
        return self.addition.input_size

    @property
    def is_random(self) -> bool:
        """True when the backbone has random weights (maps are not meaningful)."""
        return self.addition.normality_detector.encoder.is_random

    @property
    def features_identity(self) -> str:
        """Names what retained features depend on: encoder, weights, detector and projections."""
        detector = self.addition.normality_detector
        return f"{detector.encoder.identity}|{self.addition.detector.description}|{detector.projections.description}"

    def explain(self, images: Tensor, registry: Registry | None = None, keep_projected: bool = False) -> AdditionResult:
        """Maps and scores before and after the active normalities (those of ``registry`` when given).

        A normality whose ``until`` has passed (by the registry's clock) does not apply; with the
        registry given, the first inspection after it marks it expired in the audit log.
        """
        with self._lock:
            if registry is not None and registry.revision(self.line.name) != self.revision:
                self._restore(registry)  # first: another process may have added one whose until has passed
            self._expire(registry)
            return self.addition.explain(images, keep_projected=keep_projected)

    def refresh(self, registry: Registry) -> None:
        """Pick up normality changes other processes made (without expiring anything: that is an inspection's)."""
        with self._lock:
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
        limits = {k: v for k, v in (limits or {}).items() if v is not None} or None
        if limits:
            checked = limits_from_mapping(name or text, limits)
            checked.check_units(line_config(self.line).pixel_size_mm, name or text)
        with self._lock:
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


def create_line(
    registry: Registry,
    name: str,
    config: LineConfig,
    who: str,
    why: str = "",
    runtime: Runtime | None = None,
) -> LineModel | None:
    """Create a line from a config; its configured normalities become active (and audited).

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
    if not config.normalities:
        return None
    model = LineModel.load(registry, name, runtime)
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
    return model
