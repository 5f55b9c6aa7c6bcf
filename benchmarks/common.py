"""Helpers shared by the benchmark scripts: random-weight encoders, timing, peak memory, tables."""

from __future__ import annotations

import csv
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from normadd.backbone.clip_encoder import ClipEncoder
from normadd.backbone.specs import get_backbone_spec, register_open_clip_configs
from normadd.backbone.weights import ResolvedWeights
from normadd.runtime import Runtime

RESULTS = Path(__file__).parent / "results"


def random_encoder(name: str, runtime: Runtime) -> ClipEncoder:
    """A backbone at its real size with random weights: the same compute as the trained model."""
    spec = get_backbone_spec(name)
    register_open_clip_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(spec.open_clip_name, pretrained=None, force_image_size=spec.image_size)
    return ClipEncoder(model.to(runtime.device), spec, ResolvedWeights(None, "random"), runtime)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class PeakMemory:
    """Peak resident memory (CPU) or peak allocated memory (CUDA) seen inside a block, in MiB."""

    mib: float = 0.0


@contextmanager
def peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Sample RSS every 20 ms (CPU) or read torch's CUDA peak counter, for the enclosed block."""
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        result.mib = torch.cuda.max_memory_allocated(device) / 2**20
        return
    peak = [_rss_bytes()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result.mib = max(peak[0], _rss_bytes()) / 2**20


def timed(function: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``repeats`` calls, in seconds (CUDA synchronised)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def machine_line(device: torch.device) -> str:
    """One line describing where the numbers were taken."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU, {torch.get_num_threads()} threads, {os.cpu_count()} cores ({platform.processor() or 'x86_64'})"
    return f"{where}; torch {torch.__version__}; open_clip {open_clip.__version__}"


def print_table(rows: list[dict[str, object]]) -> None:
    """Print rows as an aligned text table."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


def write_csv(rows: list[dict[str, object]], path: Path) -> None:
    """Write rows to a CSV file (folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
