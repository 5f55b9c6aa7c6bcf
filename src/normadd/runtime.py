"""Device and precision choices: ``--device auto|cpu|cuda`` and ``--precision auto|fp32|bf16``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from normadd.errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision the models run.

    Attributes:
        device: The torch device.
        precision: "fp32", "bf16" or "fp16"; below fp32 means autocast on CUDA, weights stay fp32.
        note: A line for the user when the request could not be honoured as asked, else "".
    """

    device: torch.device
    precision: str
    note: str = ""

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to the chosen low precision (no-op for fp32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield


def resolve_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Turn the user's device/precision words into a :class:`Runtime`.

    ``auto`` picks CUDA with bf16 autocast when a GPU is present, else CPU with fp32. Asking for
    CUDA without one falls back to CPU with a note rather than failing.

    Raises:
        DeviceError: An unknown device or precision word.
    """
    if device not in DEVICES:
        raise DeviceError(f"unknown device '{device}': choose one of {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    note = ""
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        note = "no CUDA device found: running on the CPU instead"
    chosen = torch.device("cuda" if device in ("auto", "cuda") and has_cuda else "cpu")
    if precision == "auto":
        precision = "bf16" if chosen.type == "cuda" else "fp32"
    elif precision != "fp32" and chosen.type == "cpu":
        note = (note + "; " if note else "") + f"{precision} is not used on the CPU: running fp32"
        precision = "fp32"
    return Runtime(device=chosen, precision=precision, note=note)
