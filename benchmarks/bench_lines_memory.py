"""Resident memory of one service process serving 1 or 5 lines, with and without a shared encoder.

For each backbone (random weights at the real size: the same memory as trained weights) and each
case, a fresh Python process builds a registry of N APRIL-GAN lines on that backbone (different
products), starts the service app in-process (``create_app`` + its start-up, which preloads every
line) and then inspects one image of every line, all at once (lines on one encoder share the
image pass). It reports the start-up seconds (a first start: each case has an empty cache, so
every line's prompt embeddings are computed; a restart reads them from ``NORMADD_CACHE_DIR``),
the seconds and forward passes of that round, and RSS: after imports (the floor), after
start-up, after the round, and the process's peak (``VmHWM``).

Cases: ``1 line``; ``5 lines, shared`` (one encoder, this version); ``5 lines, own encoders``
(``service.share_encoders: false``: one encoder per line, as every version before this one).

    python benchmarks/bench_lines_memory.py                            # tiny-random and ViT-L-14-336
    python benchmarks/bench_lines_memory.py --backbones tiny-random    # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, print_table, write_csv

KEY = "bench-secret-key"
CLASSES = ("bottle", "cable", "capsule", "carpet", "grid")
CASES = (("1 line", 1, True), ("5 lines, shared", 5, True), ("5 lines, own encoders", 5, False))


def _status_mib(field: str) -> float:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(backbone: str, lines: int, share: bool) -> dict[str, Any]:
    """One case in this process (call it in a fresh one): start the app, inspect, read memory."""
    import io

    import numpy as np
    import torch
    from fastapi.testclient import TestClient
    from PIL import Image

    from normadd.config import LineConfig
    from normadd.registry.line_model import create_line
    from normadd.registry.store import Registry
    from normadd.serve.app import create_app
    from normadd.serve.settings import ServiceConfig

    floor = _status_mib("VmRSS")
    weights = None if backbone.startswith("tiny") else "random"
    names = [f"{name}-line" for name in CLASSES[:lines]]
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buffer, "PNG")
    image = buffer.getvalue()
    with tempfile.TemporaryDirectory(prefix="normadd-bench-lines-") as folder:
        database = Path(folder) / "normadd.db"
        registry = Registry(database)
        for name, class_name in zip(names, CLASSES, strict=False):
            create_line(registry, name, LineConfig(class_name=class_name, backbone=backbone, weights=weights), "bench")
        registry.close()
        settings = ServiceConfig(
            line=names[0],
            line_config=LineConfig(class_name=CLASSES[0], backbone=backbone, weights=weights),
            database=database,
            api_keys={"bench": KEY},
            device="cpu",
            batch_wait_ms=200,
            share_encoders=share,
        )
        started = time.perf_counter()
        with TestClient(create_app(settings)) as client:
            startup = time.perf_counter() - started
            after_start = _status_mib("VmRSS")
            loads = client.app.state.service.encoders.loads if share else lines  # type: ignore[attr-defined]

            def inspect(line: str) -> int:
                files = [("images", ("part.png", image, "image/png"))]
                return client.post(f"/v1/lines/{line}/inspect", headers={"X-API-Key": KEY}, files=files).status_code

            before = client.get("/healthz").json()["forward_passes"]
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=lines) as pool:
                codes = list(pool.map(inspect, names))
            round_seconds = time.perf_counter() - started
            passes = client.get("/healthz").json()["forward_passes"] - before
            after_inspect = _status_mib("VmRSS")
    if codes != [200] * lines:
        raise SystemExit(f"inspections answered {codes}")
    return {
        "threads": torch.get_num_threads(),
        "encoder_loads": loads,
        "startup_s": round(startup, 2),
        "round_s": round(round_seconds, 2),
        "round_passes": passes,
        "rss_floor_mib": round(floor),
        "rss_started_mib": round(after_start),
        "rss_inspected_mib": round(after_inspect),
        "rss_peak_mib": round(_status_mib("VmHWM")),
    }


def main() -> None:
    """Run every case in its own process; print the table and write the CSV."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["tiny-random", "ViT-L-14-336"])
    parser.add_argument("--output", type=Path, default=RESULTS / "bench_lines_memory.csv")
    parser.add_argument("--worker", nargs=3, metavar=("BACKBONE", "LINES", "SHARE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        backbone, lines, share = args.worker
        print(json.dumps(worker(backbone, int(lines), share == "shared")))
        return
    rows: list[dict[str, object]] = []
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}", "NORMADD_OFFLINE": "1"}
    for backbone in args.backbones:
        for case, lines, share in CASES:
            # a fresh cache per case: every start is a first start (prompt embeddings computed, not read)
            with tempfile.TemporaryDirectory(prefix="normadd-bench-cache-") as cache:
                command = [sys.executable, "-m", "benchmarks.bench_lines_memory", "--worker", backbone, str(lines)]
                done = subprocess.run(
                    [*command, "shared" if share else "own"],
                    env={**env, "NORMADD_CACHE_DIR": cache},
                    cwd=root,
                    capture_output=True,
                    text=True,
                )
            if done.returncode != 0:
                raise SystemExit(f"{backbone} {case} failed:\n{done.stderr[-3000:]}")
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"backbone": backbone, "case": case, "lines": lines, **measured})
            print(f"{backbone}: {case} done", file=sys.stderr, flush=True)
    print_table(rows)
    write_csv(rows, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
