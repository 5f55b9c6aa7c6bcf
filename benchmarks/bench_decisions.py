"""Cost of decisions per image: verdicts + accepted_by, and acceptance limits, over plain normality addition.

For each backbone (random weights at the real size) and suppression-map size (256, the paper's,
and 518, ViT-L-14-336's input size), one image goes through ``NormalityAddition.explain`` with 3
normalities ("plain normality addition", the denominator). On its maps:

* ``verdicts``: ``DecisionPolicy.apply`` without limits: the score without each normality and
  the verdicts with accepted_by (threshold at the 95th percentile of the "before" map, so the
  image is NG and accepted_by is computed);
* ``verdicts + limits``: ``DecisionPolicy.apply`` with max_area, max_length and a region on all 3
  normalities, for a 900 × 900 image: connected components, their areas, lengths and region
  check, the suppression product and the after score again, then the verdicts.

    python benchmarks/bench_decisions.py                         # tiny-random and ViT-L-14-336
    python benchmarks/bench_decisions.py --backbones tiny-random --repeats 5
    python benchmarks/bench_decisions.py --threads 1      # per core, on a machine others load too
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
import torch
from scipy import ndimage

from benchmarks.common import RESULTS, machine_line, print_table, random_encoder, timed, write_csv
from normadd.decisions import AcceptanceLimits, Size
from normadd.decisions.policy import DecisionPolicy, ThresholdSetting
from normadd.detectors.aprilgan import AprilGanDetector
from normadd.normality.addition import NormalityAddition
from normadd.normality.text_normality import NormalityDetector
from normadd.prompts.text_embedding import TextEmbedder
from normadd.runtime import resolve_runtime

NORMALITIES = ("broken", "contamination", "scratch")


def bench(name: str, sizes: list[int], repeats: int, device: str) -> list[dict[str, object]]:
    runtime = resolve_runtime(device, "auto")
    encoder = random_encoder(name, runtime)
    embedder = TextEmbedder(encoder, disk_cache=False)
    detector = AprilGanDetector(encoder, "bottle", text_embedder=embedder)
    rows: list[dict[str, object]] = []
    image = torch.rand(1, 3, encoder.image_size, encoder.image_size)
    for size in sizes:
        normality_detector = NormalityDetector(
            encoder, "bottle", projections=detector.projections, text_embedder=embedder, size=size
        )
        addition = NormalityAddition(detector, list(NORMALITIES), normality_detector=normality_detector)
        plain = timed(lambda a=addition: a.explain(image), runtime.device, repeats)
        result = addition.explain(image)
        names = result.names
        strengths = [1.0] * len(names)
        threshold = float(torch.quantile(result.before.flatten().float(), 0.95))
        region = np.zeros((size, size), dtype=bool)
        region[: size // 2] = True
        limits = AcceptanceLimits(Size(0.01 * 900 * 900), Size(0.2 * 900), region, "bench")
        setting = ThresholdSetting(threshold)
        verdicts_only = DecisionPolicy(setting, {})
        limited = DecisionPolicy(setting, {}, dict.fromkeys(names, limits))
        components = int(ndimage.label(result.before[0].numpy() > threshold)[1])
        calls = (
            ("verdicts", functools.partial(verdicts_only.apply, result, strengths)),
            ("verdicts + limits", functools.partial(limited.apply, result, strengths, [(900, 900)])),
        )
        for label, call in calls:
            seconds = timed(call, runtime.device, max(repeats, 5))
            rows.append(
                {
                    "backbone": name,
                    "input": encoder.image_size,
                    "map": size,
                    "normalities": len(names),
                    "components": components,
                    "decision": label,
                    "addition_ms": f"{1000 * plain:.1f}",
                    "decision_ms": f"{1000 * seconds:.2f}",
                    "ratio": f"{100 * seconds / plain:.2f}%",
                    "device": runtime.device.type,
                }
            )
            print("  ".join(str(v) for v in rows[-1].values()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="tiny-random,ViT-L-14-336")
    parser.add_argument("--sizes", default="256,518")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: list[dict[str, object]] = []
    for name in args.backbones.split(","):
        rows += bench(name, [int(s) for s in args.sizes.split(",")], args.repeats, args.device)
    print()
    print(machine_line(resolve_runtime(args.device, "auto").device))
    print_table(rows)
    write_csv(rows, RESULTS / "bench_decisions.csv")
    print(f"wrote {RESULTS / 'bench_decisions.csv'}")


if __name__ == "__main__":
    main()
