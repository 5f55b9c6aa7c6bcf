"""Device and precision choices: ``--device auto|cpu|cuda`` and ``--precision auto|fp32|bf16``.

``auto`` runs bf16 autocast where the hardware computes bf16 natively: on CUDA, and on CPUs that
report AVX512_BF16 or AMX-BF16 (read from ``/proc/cpuinfo``, never assumed); fp32 elsewhere. The
numerically fragile parts (softmaxes over scaled cosines, the normality heads, distances) run
outside autocast, in fp32, in every detector.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from normadd.errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of native bf16 arithmetic


@functools.cache
def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The native bf16 instruction sets this CPU reports (empty where it reports none or no cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)
    return ()


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision the models run.

    Attributes:
        device: The torch device.
        precision: "fp32", "bf16" or "fp16"; below fp32 means autocast, weights stay fp32.
        note: A line for the user when the request could not be honoured as asked, or naming the
            precision ``auto`` chose on a CPU with native bf16; else "".
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

    ``auto`` picks CUDA with bf16 autocast when a GPU is present, else the CPU: with bf16
    autocast when it has native bf16 (:func:`cpu_bf16_flags`, said in the note), else fp32. Asking
    for CUDA without one falls back to CPU with a note rather than failing; so does bf16 on a CPU
    without native bf16, and fp16 on any CPU.

    Raises:
        DeviceError: An unknown device or precision word.
    """
    if device not in DEVICES:
        raise DeviceError(f"unknown device '{device}': choose one of {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    notes = []
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        notes.append("no CUDA device found: running on the CPU instead")
    chosen = torch.device("cuda" if device in ("auto", "cuda") and has_cuda else "cpu")
    if chosen.type == "cuda":
        precision = "bf16" if precision == "auto" else precision
        return Runtime(device=chosen, precision=precision, note="; ".join(notes))
    native = cpu_bf16_flags()
    if precision == "auto":
        precision = "bf16" if native else "fp32"
        if native:
            notes.append(
                f"the CPU computes bf16 natively ({', '.join(native)}): running bf16 autocast "
                "(--precision fp32 for full precision)"
            )
    elif precision == "fp16" or (precision == "bf16" and not native):
        why = "no native bf16" if precision == "bf16" else "no fast fp16"
        notes.append(f"{precision} is not used on this CPU ({why}): running fp32")
        precision = "fp32"
    return Runtime(device=chosen, precision=precision, note="; ".join(notes))
