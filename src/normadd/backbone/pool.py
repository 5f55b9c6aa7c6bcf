"""CLIP encoders built once per run: a run over several classes reuses each encoder it has built."""

from __future__ import annotations

from pathlib import Path

from normadd.backbone.clip_encoder import ClipEncoder
from normadd.runtime import Runtime, resolve_runtime


class EncoderPool:
    """The encoders of one run, keyed by backbone, weights, tapped layers, image size, device and precision.

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
        image_size: int | None = None,
        weights_option: str = "--weights",
    ) -> ClipEncoder:
        """The encoder :meth:`ClipEncoder.from_name` would build, built on the first request only.

        ``weights_option`` only names the flag in the error hint of a first, failing build.
        """
        runtime = runtime or resolve_runtime("cpu", "fp32")
        key = (
            name,
            None if weights is None else str(weights),
            layers,
            image_size,
            str(runtime.device),
            runtime.precision,
        )
        if key not in self._encoders:
            self._encoders[key] = ClipEncoder.from_name(
                name,
                weights=weights,
                layers=layers,
                runtime=runtime,
                image_size=image_size,
                weights_option=weights_option,
            )
            self.loads += 1
        return self._encoders[key]
