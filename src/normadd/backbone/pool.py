"""CLIP encoders built once per run: a run over several classes reuses each encoder it has built."""

from __future__ import annotations

from pathlib import Path

from normadd.backbone.clip_encoder import ClipEncoder
from normadd.runtime import Runtime, resolve_runtime


class EncoderPool:
    """The encoders of one run, keyed by backbone, weights, tapped layers, device and precision.

    An encoder holds no per-class state (prompts, projections and memories live in the detectors),
    so the detectors of every class can share it.

    Attributes:
        loads: How many encoders were built (weights loaded) so far.
    """

    def __init__(self) -> None:
        self._encoders: dict[tuple[object, ...], ClipEncoder] = {}
        self.loads = 0

    def get(
        self,
        name: str,
        weights: str | Path | None = None,
        layers: tuple[int, ...] | None = None,
        runtime: Runtime | None = None,
    ) -> ClipEncoder:
        """The encoder :meth:`ClipEncoder.from_name` would build, built on the first request only."""
        runtime = runtime or resolve_runtime("cpu", "fp32")
        key = (name, None if weights is None else str(weights), layers, str(runtime.device), runtime.precision)
        if key not in self._encoders:
            self._encoders[key] = ClipEncoder.from_name(name, weights=weights, layers=layers, runtime=runtime)
            self.loads += 1
        return self._encoders[key]
