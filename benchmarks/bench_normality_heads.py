"""The map heads (text similarity, upsampling, sigmoid, layer sum): three ways, same CLIP features.

APRIL-GAN's detector and the normality detector turn projected patch tokens into maps: per tapped
layer, logits on the patch grid, bilinear upsampling of the *logits* to the map size, then the
two-class softmax (a sigmoid of the logit difference), summed or averaged over the layers. For a
tiny backbone this, at 256 x 256 per normality, costs more than the image pass. Compared here on
bottle test images, random weights at the real sizes:

- ``per-layer (before)``: the code before this benchmark: one interpolate and one sigmoid per
  layer, a new tensor for each and for the running sum.
- ``fused (now)``: :func:`normadd.detectors.segmentation.segment`: all layers' logit channels in
  one interpolate, sigmoid and layer sum in place (APRIL-GAN's order kept).
- ``grid-first (not taken)``: sigmoid and layer mean on the patch grid, one upsampling at the end:
  the cheapest, but not APRIL-GAN's order (the max abs map difference says how far it moves).

``heads_s`` times the heads alone on one batch's features (detector map + normality maps +
keep/after), ``explain_s`` a whole ``NormalityAddition.explain`` (image pass included). The
variants take turns, one call each per round, ``--repeats`` rounds; the minimum is the figure
least moved by other work on a shared CPU (the median is given too), and ``heads_cpu_s`` is the
process CPU time of the heads (with ``--threads 1``, the figure load moves least). ``max_diff_*`` is against
``per-layer (before)``.

    python -m benchmarks.bench_normality_heads --threads 1            # tiny-random, batch 1 and 8
    python -m benchmarks.bench_normality_heads --backbones ViT-L-14-336 --batches 1,8 --heads-only
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

import normadd.detectors.aprilgan as aprilgan_module
import normadd.normality.text_normality as normality_module
from benchmarks.common import RESULTS, machine_line, print_table, random_encoder, write_csv
from normadd.detectors.aprilgan import AprilGanDetector
from normadd.detectors.segmentation import LOGIT_SCALE, layer_maps, segment
from normadd.images import load_batch
from normadd.normality.addition import NormalityAddition
from normadd.normality.suppression import keep_factor, resize_maps
from normadd.prompts.text_embedding import TextEmbedder
from normadd.runtime import Runtime

NORMALITIES = ("broken", "contamination", "scratch")
BOTTLE_TEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_ad" / "bottle" / "test"

Segment = Callable[[list[Tensor], Tensor, Tensor, tuple[int, int], int, str], Tensor]


def segment_per_layer(
    projected: list[Tensor], normal: Tensor, others: Tensor, grid: tuple[int, int], size: int, reduce: str
) -> Tensor:
    """The code before: one :func:`layer_maps` call per layer and a plain sum (a new tensor each)."""
    normal, others = normal.to(projected[0].device), others.to(projected[0].device)
    total = sum(layer_maps(t, normal, others, grid, size) for t in projected)
    assert isinstance(total, Tensor)
    return total / len(projected) if reduce == "mean" else total


def segment_grid_first(
    projected: list[Tensor], normal: Tensor, others: Tensor, grid: tuple[int, int], size: int, reduce: str
) -> Tensor:
    """Sigmoid and layer sum on the patch grid, one upsampling of the result (not APRIL-GAN's order)."""
    differences = (others - normal.unsqueeze(0)).T.to(projected[0].device)
    total = sum(torch.sigmoid(LOGIT_SCALE * F.normalize(t.float(), dim=-1) @ differences) for t in projected)
    assert isinstance(total, Tensor)
    batch, _, k = total.shape
    total = total.permute(0, 2, 1).reshape(batch, k, *grid)
    total = F.interpolate(total, size=(size, size), mode="bilinear", align_corners=True)
    return total / len(projected) if reduce == "mean" else total


VARIANTS: dict[str, Segment] = {
    "per-layer (before)": segment_per_layer,
    "fused (now)": segment,
    "grid-first (not taken)": segment_grid_first,
}


@contextmanager
def using(function: Segment) -> Iterator[None]:
    """Route both the detector's and the normality detector's maps through ``function``."""
    saved = aprilgan_module.segment, normality_module.segment
    aprilgan_module.segment = normality_module.segment = function  # type: ignore[assignment]
    try:
        yield
    finally:
        aprilgan_module.segment, normality_module.segment = saved


def bottle_images(count: int, size: int) -> Tensor:
    """The first ``count`` bottle test images (sorted over the defect folders), at ``size``."""
    paths = sorted(BOTTLE_TEST.glob("*/*.png"))[:: max(1, 83 // count)][:count]
    _, images, _ = load_batch(paths, size)
    assert images is not None and images.shape[0] == count
    return images


def heads(addition: NormalityAddition, features: object) -> tuple[Tensor, Tensor, Tensor]:
    """What ``explain`` does after the image pass: detector map, ``A_sup``, after."""
    detector = addition.detector
    assert isinstance(detector, AprilGanDetector)
    before = detector.detect_features(features)  # type: ignore[arg-type]
    detector_maps = resize_maps(before.maps.float(), addition.normality_detector.size)
    normalities = list(addition.normalities.values())
    suppression = addition.normality_detector.suppression_maps(features, normalities)  # type: ignore[arg-type]
    strengths = torch.tensor([n.strength for n in normalities], dtype=torch.float32)
    after = detector_maps * keep_factor(suppression, strengths)
    return detector_maps, suppression, after


def seconds(function: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    """Time of one call on ``clock`` (wall by default)."""
    start = clock()
    function()
    return clock() - start


def bench(name: str, batches: list[int], counts: list[int], repeats: int, explain: bool) -> list[dict[str, object]]:
    """Rows for one backbone: every batch size, normality count and variant."""
    runtime = Runtime(torch.device("cpu"), "fp32")
    encoder = random_encoder(name, runtime)
    detector = AprilGanDetector(encoder, "bottle", text_embedder=TextEmbedder(encoder, disk_cache=False))
    rows: list[dict[str, object]] = []
    for batch in batches:
        images = bottle_images(batch, encoder.image_size)
        features = encoder.encode_images(encoder.preprocess(images))
        features.projected_by(detector.projections)  # projected once, as in explain
        for count in counts:
            addition = NormalityAddition(detector, list(NORMALITIES[:count]))
            outputs: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
            times: dict[str, dict[str, list[float]]] = {v: {"heads": [], "cpu": [], "explain": []} for v in VARIANTS}
            for _ in range(repeats):  # rounds: every variant once per round, so load swings hit all
                for label, function in VARIANTS.items():
                    with using(function):
                        outputs[label] = heads(addition, features)
                        times[label]["heads"].append(seconds(lambda a=addition, f=features: heads(a, f)))
                        cpu = seconds(lambda a=addition, f=features: heads(a, f), time.process_time)
                        times[label]["cpu"].append(cpu)
                        if explain:
                            times[label]["explain"].append(seconds(lambda a=addition, x=images: a.explain(x)))
            reference = outputs["per-layer (before)"]
            for label in VARIANTS:
                diffs = [
                    (o - r).abs().max().item() if o.numel() else 0.0
                    for o, r in zip(outputs[label], reference, strict=True)
                ]
                explain_s = min(times[label]["explain"], default=0.0)
                rows.append(
                    {
                        "backbone": name,
                        "batch": batch,
                        "normalities": count,
                        "variant": label,
                        "heads_s_min": f"{min(times[label]['heads']):.4f}",
                        "heads_s_median": f"{statistics.median(times[label]['heads']):.4f}",
                        "heads_cpu_s_median": f"{statistics.median(times[label]['cpu']):.4f}",
                        "explain_s_min": f"{explain_s:.4f}" if explain else "-",
                        "images/s": f"{batch / explain_s:.2f}" if explain else "-",
                        "max_diff_before": f"{diffs[0]:.1e}",
                        "max_diff_suppression": f"{diffs[1]:.1e}",
                        "max_diff_after": f"{diffs[2]:.1e}",
                    }
                )
                print("  ".join(str(v) for v in rows[-1].values()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="tiny-random")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--normalities", default="0,1,3", help="counts of added normalities to run")
    parser.add_argument("--repeats", type=int, default=7, help="rounds; each times every variant once")
    parser.add_argument("--heads-only", action="store_true", help="time the heads, not whole explain calls")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {machine_line(torch.device('cpu'))}")
    batches = [int(b) for b in args.batches.split(",")]
    counts = [int(c) for c in args.normalities.split(",")]
    explain = not args.heads_only
    rows = [row for name in args.backbones.split(",") for row in bench(name, batches, counts, args.repeats, explain)]
    print("\n## map heads: per layer (before) vs fused (now) vs grid-first (not APRIL-GAN's order)")
    print_table(rows)
    suffix = "_".join(n.replace("-", "").lower() for n in args.backbones.split(","))
    path = RESULTS / f"bench_normality_heads_{suffix}.csv"
    write_csv(rows, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
