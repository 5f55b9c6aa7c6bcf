"""Images/s and peak memory of every detector at its real size (random weights), and PatchCore's fit time.

Each detector runs in its own process, so one model's memory does not count against the next:
WinCLIP on ViT-B-16-plus-240 at 240 px (zero-shot and 1-shot), PatchCore on WideResNet-50 at 256 px
(memory bank from the bottle training images), APRIL-GAN on ViT-L-14-336 at 518 px. Random weights
cost the same compute as trained ones. Writes ``results/bench_detectors.csv``.

    python benchmarks/bench_detectors.py                    # 2 images per detector, CPU
    python benchmarks/bench_detectors.py --images 4 --fit-images 20
    python -m benchmarks.bench_detectors --detectors winclip-0shot --anomalib-python /tmp/anomalib-venv/bin/python

With ``--anomalib-python`` (the Python of an environment with ``anomalib[clip]==2.7.0``, open_clip
2.24), every WinCLIP row is followed by anomalib's own WinCLIP on the same images in the same run
(``benchmarks/anomalib_winclip_worker.py``); that run writes ``results/bench_detectors_winclip.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, machine_line, peak_memory, print_table, random_encoder, timed, write_csv
from normadd.runtime import resolve_runtime

BOTTLE_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_ad" / "bottle" / "train" / "good"
DETECTORS = ("winclip-0shot", "winclip-1shot", "patchcore", "aprilgan")


def _row(name: str, size: int, images: int, seconds: float, setup_s: float, peak_mib: float, **extra: object) -> dict:
    return {
        "detector": name,
        "input": f"{size}px",
        "images": images,
        "images_per_s": round(images / seconds, 3),
        "s_per_image": round(seconds / images, 2),
        "setup_s": round(setup_s, 1),
        "peak_rss_mib": round(peak_mib),
        **extra,
    }


def bench_one(name: str, count: int, fit_images: int, device: str) -> dict:
    """One detector's row (run in a fresh process by :func:`main`)."""
    runtime = resolve_runtime(device, "auto")
    torch.manual_seed(0)
    if name.startswith("winclip"):
        from normadd.detectors.winclip import WinClipDetector

        with peak_memory(runtime.device) as peak:
            start = time.perf_counter()
            encoder = random_encoder("ViT-B-16-plus-240", runtime)
            detector = WinClipDetector(encoder, "bottle", reference_images=None)
            if name.endswith("1shot"):
                detector.set_reference(torch.rand(1, 3, 240, 240))
            setup = time.perf_counter() - start
            torch.manual_seed(0)  # the images the anomalib worker draws
            images = torch.rand(count, 3, 240, 240)
            seconds = timed(lambda: detector.detect(images), runtime.device, 1)
        return _row(
            f"normadd WinCLIP {name.split('-')[1]} (ViT-B-16-plus-240)",
            240,
            count,
            seconds,
            setup,
            peak.mib,
            images_checksum=round(float(images.sum()), 3),
        )
    if name == "patchcore":
        from normadd.detectors.patchcore import PatchCoreDetector
        from normadd.detectors.reference import find_reference_images, load_reference_images

        with peak_memory(runtime.device) as peak:
            detector = PatchCoreDetector("wide_resnet50_2", runtime=runtime)
            paths = find_reference_images(BOTTLE_TRAIN)[:fit_images]
            start = time.perf_counter()
            train = load_reference_images(paths, detector.input_size)
            detector.fit(train[i : i + 16] for i in range(0, len(train), 16))
            fit = time.perf_counter() - start
            images = torch.rand(count, 3, 256, 256)
            seconds = timed(lambda: detector.detect(images), runtime.device, 1)
        assert detector.memory_bank is not None
        return _row(
            "PatchCore (WRN-50 layer2+3)",
            256,
            count,
            seconds,
            fit,
            peak.mib,
            fit_images=len(paths),
            memory_bank=int(detector.memory_bank.shape[0]),
        )
    from normadd.detectors.aprilgan import AprilGanDetector
    from normadd.prompts.text_embedding import TextEmbedder

    with peak_memory(runtime.device) as peak:
        start = time.perf_counter()
        encoder = random_encoder("ViT-L-14-336", runtime)
        detector = AprilGanDetector(encoder, "bottle", text_embedder=TextEmbedder(encoder, disk_cache=False))
        setup = time.perf_counter() - start
        images = torch.rand(count, 3, 518, 518)
        seconds = timed(lambda: detector.detect(images), runtime.device, 1)
    return _row("APRIL-GAN (ViT-L-14-336)", 518, count, seconds, setup, peak.mib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2, help="Images timed per detector (one batch).")
    parser.add_argument("--fit-images", type=int, default=209, help="Bottle training images PatchCore fits on.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    parser.add_argument("--anomalib-python", help="Python of an anomalib 2.7 + open_clip 2.24 environment.")
    parser.add_argument("--only", choices=DETECTORS, help=argparse.SUPPRESS)  # worker mode: print one JSON row
    args = parser.parse_args()
    if args.only:
        print(json.dumps(bench_one(args.only, args.images, args.fit_images, args.device)))
        return
    rows = []
    for name in args.detectors:
        command = [sys.executable, "-m", "benchmarks.bench_detectors", "--only", name, "--images", str(args.images)]
        command += ["--fit-images", str(args.fit_images), "--device", args.device]
        with tempfile.TemporaryDirectory() as cache:  # an empty text cache: setup_s includes text encoding
            env = {**os.environ, "NORMADD_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"done: {name}", file=sys.stderr)
        if name.startswith("winclip") and args.anomalib_python:
            worker = Path(__file__).with_name("anomalib_winclip_worker.py")
            shots = "1" if name.endswith("1shot") else "0"
            command = [args.anomalib_python, str(worker), "--images", str(args.images), "--shots", shots]
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"done: anomalib {name}", file=sys.stderr)
    columns = ["detector", "input", "images", "images_per_s", "s_per_image", "setup_s", "peak_rss_mib"]
    columns += ["fit_images", "memory_bank", "images_checksum"]
    rows = [{c: row.get(c, "") for c in columns} for row in rows]
    print(machine_line(resolve_runtime(args.device, "auto").device))
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    print("setup_s = model build + text (WinCLIP, APRIL-GAN) or PatchCore fit (load, features, coreset)")
    print_table(rows)
    # With anomalib's rows the run is the side-by-side WinCLIP comparison: its own file.
    write_csv(rows, RESULTS / ("bench_detectors_winclip.csv" if args.anomalib_python else "bench_detectors.csv"))


if __name__ == "__main__":
    main()
