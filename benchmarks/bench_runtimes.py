"""torch eager vs onnxruntime vs OpenVINO (f32) for a whole exported line: images/s and peak RSS.

The ViT-L-14-336 line at 518 px (random weights, fp32, APRIL-GAN with two normalities) is exported
once with ``normadd export`` (dynamo), then each runtime runs in its own subprocess so its peak RSS
is its own: build or load, one warm-up pass, then ``--repeats`` timed passes of ``--batch`` images.
The torch process saves its outputs; the other two report their max abs difference to them (the
export's equality check at ViT-L size, too heavy for the test suite).

    python benchmarks/bench_runtimes.py                              # ViT-L-14-336, batch 1, 3 repeats
    python benchmarks/bench_runtimes.py --backbone tiny-random --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, print_table, random_encoder, write_csv

RUNTIMES = ("torch", "onnx", "openvino")
NORMALITIES = ("broken", "contamination:0.5")
FIELDS = ("before", "suppression", "keep", "after")
SCORES = ("before_scores", "after_scores", "detector_scores")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _line(backbone: str):
    from normadd.config import LineConfig
    from normadd.detectors.aprilgan import AprilGanDetector
    from normadd.normality.addition import NormalityAddition
    from normadd.prompts.text_embedding import TextEmbedder
    from normadd.runtime import resolve_runtime

    encoder = random_encoder(backbone, resolve_runtime("cpu", "fp32"))
    detector = AprilGanDetector(encoder, "bottle", text_embedder=TextEmbedder(encoder, disk_cache=False))
    return NormalityAddition(detector, list(NORMALITIES)), LineConfig(class_name="bottle", backbone=backbone)


def _images(size: int, batch: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def worker_export(backbone: str, folder: Path) -> dict[str, object]:
    from normadd.export.exporter import export_line

    addition, config = _line(backbone)
    report = export_line(addition, config, folder, "onnx")
    size = sum(p.stat().st_size for p in report.files)
    return {"seconds": report.seconds, "peak_rss_mib": _peak_rss_mib(), "mib": size / 2**20}


def worker_run(runtime: str, backbone: str, folder: Path, batch: int, repeats: int) -> dict[str, object]:
    start = time.perf_counter()
    if runtime == "torch":
        model, _ = _line(backbone)
    else:
        from normadd.export.runtime import ExportedLine

        model = ExportedLine(folder, runtime)
    load = time.perf_counter() - start
    images = _images(model.input_size, batch)
    start = time.perf_counter()
    result = model.explain(images)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.explain(images)
        times.append(time.perf_counter() - start)
    reference = folder / "torch_outputs.npz"
    diffs: dict[str, float] = {}
    if runtime == "torch":
        np.savez(reference, **{name: getattr(result, name).numpy() for name in (*FIELDS, *SCORES)})
    else:
        saved = np.load(reference)
        diffs = {name: float(np.abs(getattr(result, name).numpy() - saved[name]).max()) for name in (*FIELDS, *SCORES)}
    median = sorted(times)[len(times) // 2]
    return {
        "load_s": load,
        "first_s": first,
        "median_s": median,
        "peak_rss_mib": _peak_rss_mib(),
        "max_map_diff": max((diffs.get(n, 0.0) for n in FIELDS), default=0.0),
        "max_score_diff": max((diffs.get(n, 0.0) for n in SCORES), default=0.0),
        "threads": torch.get_num_threads() if runtime == "torch" else os.cpu_count(),
    }


def _child(args: list[str]) -> dict[str, object]:
    env = {**os.environ, "CI": "true", "HF_HUB_OFFLINE": "1", "NORMADD_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_runtimes", *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"worker {args[:2]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="ViT-L-14-336")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=("export", *RUNTIMES), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "export":
        print(json.dumps(worker_export(args.backbone, args.folder)))
        return
    if args.worker:
        print(json.dumps(worker_run(args.worker, args.backbone, args.folder, args.batch, args.repeats)))
        return

    load = os.getloadavg()
    print(f"{args.backbone}, batch {args.batch}, {args.repeats} timed passes, load average {load[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="normadd-bench-") as scratch:
        folder = Path(scratch) / "export"
        common = ["--backbone", args.backbone, "--folder", str(folder)]
        exported = _child(["--worker", "export", *common])
        print(f"export (dynamo, onnx): {exported['seconds']:.1f} s, peak RSS {exported['peak_rss_mib']:.0f} MiB, "
              f"{exported['mib']:.0f} MiB on disk", flush=True)
        rows: list[dict[str, object]] = []
        for runtime in RUNTIMES:
            out = _child(["--worker", runtime, *common, "--batch", str(args.batch), "--repeats", str(args.repeats)])
            rows.append(
                {
                    "backbone": args.backbone,
                    "runtime": {"torch": "torch eager", "onnx": "onnxruntime", "openvino": "OpenVINO f32"}[runtime],
                    "batch": args.batch,
                    "images/s": f"{args.batch / float(out['median_s']):.3f}",
                    "s/pass": f"{float(out['median_s']):.2f}",
                    "first_pass_s": f"{float(out['first_s']):.2f}",
                    "load_s": f"{float(out['load_s']):.1f}",
                    "peak_rss_MiB": f"{float(out['peak_rss_mib']):.0f}",
                    "max_map_diff": f"{float(out['max_map_diff']):.1e}" if runtime != "torch" else "-",
                    "max_score_diff": f"{float(out['max_score_diff']):.1e}" if runtime != "torch" else "-",
                    "load_avg_1m": f"{os.getloadavg()[0]:.2f}",
                }
            )
            print("  ".join(str(v) for v in rows[-1].values()), flush=True)
    print()
    print_table(rows)
    name = "bench_runtimes.csv" if args.backbone == "ViT-L-14-336" else f"bench_runtimes_{args.backbone}.csv"
    export_row = {
        "backbone": args.backbone,
        "runtime": "export (torch.onnx dynamo)",
        "batch": "",
        "images/s": "",
        "s/pass": "",
        "first_pass_s": "",
        "load_s": f"{float(exported['seconds']):.1f}",
        "peak_rss_MiB": f"{float(exported['peak_rss_mib']):.0f}",
        "max_map_diff": "",
        "max_score_diff": "",
        "load_avg_1m": "",
    }
    write_csv([*rows, export_row], RESULTS / name)
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
