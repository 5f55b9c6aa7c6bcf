"""WinCLIP's window passes: the whole last block vs the class token alone in it (ViT-B-16-plus-240).

Times the window embeddings of both scales for random images (random weights, the same compute
as trained ones), each way in turn, and the largest difference between the two embeddings.
Writes ``results/bench_winclip_windows.csv``.

    python -m benchmarks.bench_winclip_windows --images 1 --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from unittest import mock

import torch

from benchmarks.common import RESULTS, machine_line, print_table, random_encoder, write_csv
from normadd.detectors.winclip import WinClipDetector
from normadd.runtime import resolve_runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runtime = resolve_runtime("cpu", "fp32")
    encoder = random_encoder("ViT-B-16-plus-240", runtime)
    detector = WinClipDetector(encoder, "bottle", text_embeddings=torch.randn(2, encoder.embed_dim))
    torch.manual_seed(0)
    pixels = encoder.preprocess(torch.rand(args.images, 3, 240, 240))
    with torch.inference_mode():
        tokens = encoder.model.visual._embeds(pixels)
    whole = mock.patch.object(detector, "_class_token_transformer", encoder.model.visual.transformer)
    times: dict[str, list[float]] = {"whole last block": [], "class token alone in the last block": []}
    outputs: dict[str, list[torch.Tensor]] = {}
    for _ in range(args.repeats):
        for label in times:
            with torch.inference_mode(), (whole if label == "whole last block" else contextlib.nullcontext()):
                start = time.perf_counter()
                outputs[label] = [detector._window_embeddings(tokens, indices) for indices in detector.windows]
                times[label].append(time.perf_counter() - start)
    reference = outputs["whole last block"]
    rows = []
    for label, seconds in times.items():
        best = min(seconds)
        difference = max((a - b).abs().max().item() for a, b in zip(outputs[label], reference, strict=True))
        rows.append(
            {
                "window_passes": label,
                "images": args.images,
                "windows": sum(len(w) for w in detector.windows),
                "seconds_per_image": f"{best / args.images:.2f}",
                "speed_up": f"{min(times['whole last block']) / best:.2f}x",
                "max_abs_diff": f"{difference:.1e}",
            }
        )
    print(f"# {machine_line(runtime.device)}; load average (1, 5, 15 min) {os.getloadavg()}")
    print_table(rows)
    write_csv(rows, RESULTS / "bench_winclip_windows.csv")
    print(f"wrote {RESULTS / 'bench_winclip_windows.csv'}")


if __name__ == "__main__":
    main()
