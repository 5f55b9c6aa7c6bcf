"""``normadd inspect --ray`` vs the local path: images/s of the same command on the bottle test set.

Each mode runs the real command in a fresh process (``python -m normadd inspect <images> ...``),
timed end to end: reading the images, the forward passes, writing the overlays, ``scores.csv``
and ``run.json``; with ``--ray`` also starting a private Ray runtime (or joining ``--ray-address``)
and its actors, each building the line. On one 2-core machine parity is the expectation: the
point is that the same command runs on a cluster. The scores of both runs are compared
(largest absolute difference of the ``score_before``/``score_after`` columns).

    python benchmarks/bench_ray.py                                  # 83 bottle test images, tiny-random
    python benchmarks/bench_ray.py --backbone ViT-L-14-336 --limit 8 --ray-address auto

``run(...)`` returns the rows for other benchmarks (``bench_service.py``) to print or write.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, write_csv

REPO = Path(__file__).resolve().parents[1]
BOTTLE_TEST = REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle" / "test"


def bottle_test_images(limit: int | None = None) -> list[Path]:
    """The bottle test images, sorted (the first ``limit`` of them when given)."""
    images = sorted(BOTTLE_TEST.rglob("*.png"))
    if not images:
        raise SystemExit(f"no bottle test images at {BOTTLE_TEST}: clone the repo with ../shared beside it")
    return images[:limit] if limit else images


def _scores(path: Path) -> dict[str, tuple[float, float]]:
    with path.open() as handle:
        return {row["image"]: (float(row["score_before"]), float(row["score_after"])) for row in csv.DictReader(handle)}


def _inspect(images: list[Path], out: Path, backbone: str, batch_size: int, ray: str | None) -> tuple[float, int, str]:
    """Wall seconds, exit code and the last lines of output of one ``normadd inspect`` process."""
    command = [sys.executable, "-m", "normadd", "inspect", *map(str, images), "--class-name", "bottle"]
    command += ["--add", "broken", "--backbone", backbone, "--batch-size", str(batch_size), "--out", str(out)]
    if ray is not None:
        command += ["--ray-address", ray] if ray else ["--ray"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "NORMADD_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    tail = " | ".join((done.stderr + done.stdout).strip().splitlines()[-2:])
    return seconds, done.returncode, tail


def run(
    images: list[Path] | None = None,
    backbone: str = "tiny-random",
    batch_size: int = 4,
    ray_address: str | None = None,
) -> list[dict[str, object]]:
    """Time ``normadd inspect`` locally and with ``--ray`` on the same images; one row per mode.

    Args:
        images: Image files (default: the 83 bottle test images).
        backbone: ``--backbone`` (``tiny-random`` by default; ViT-L-14-336 runs with random weights).
        batch_size: ``--batch-size``.
        ray_address: ``--ray-address`` (default: ``--ray``, a private runtime on this machine unless
            ``RAY_ADDRESS`` is set).
    """
    paths = images if images is not None else bottle_test_images()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as folder:
        outs = {"local": Path(folder) / "local", "ray": Path(folder) / "ray"}
        for mode, out in outs.items():
            ray = None if mode == "local" else ray_address or ""
            seconds, code, tail = _inspect(paths, out, backbone, batch_size, ray)
            if code != 0:
                raise SystemExit(f"normadd inspect ({mode}) exited {code}: {tail}")
            rows.append(
                {
                    "mode": "local" if mode == "local" else f"--ray {ray_address or '(private runtime)'}",
                    "backbone": backbone,
                    "images": len(paths),
                    "batch_size": batch_size,
                    "wall_s": f"{seconds:.1f}",
                    "images_per_s": f"{len(paths) / seconds:.2f}",
                    "load_avg_1m": f"{os.getloadavg()[0]:.1f}",
                    "cpus": os.cpu_count(),
                }
            )
        local, remote = _scores(outs["local"] / "scores.csv"), _scores(outs["ray"] / "scores.csv")
        if list(local) != list(remote):
            raise SystemExit("the --ray run wrote other rows (or another order) than the local run")
        diff = max(abs(a - b) for image in local for a, b in zip(local[image], remote[image], strict=True))
        for row in rows:
            row["max_score_diff"] = f"{diff:.1e}"
    return rows


def markdown_table(rows: list[dict[str, object]]) -> str:
    """The rows as a Markdown table."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-random")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None, help="Only the first N bottle test images.")
    parser.add_argument("--ray-address", default=None, help="local, auto, host:6379 or ray://host:10001.")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_ray.csv")
    args = parser.parse_args()
    rows = run(bottle_test_images(args.limit), args.backbone, args.batch_size, args.ray_address)
    print(markdown_table(rows))
    print(f"\n{platform.node() or 'this machine'}: {os.cpu_count()} CPUs; load average (1, 5, 15 min) at the end: "
          f"{tuple(round(x, 2) for x in os.getloadavg())}")
    write_csv(rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
