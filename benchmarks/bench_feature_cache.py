"""How many bits the evaluation cache's tokens need: map deviation from fp32 per stored precision.

``normadd evaluate`` caches, per test image, the normality detector's L2-normalised projected patch
tokens (L, N, D) and computes every group's suppression map from them. This stores the tokens of a
few bottle test images (random weights at the real sizes) in each candidate precision, computes
the suppression and after maps of 3 added normalities from what comes back, exactly as the
evaluation does, and prints the largest deviation from the maps of fp32 tokens, with the bytes
one image's record takes. The 8-bit formats need no scale: the maps re-normalise every token.
"Within" the limit means suppression maps (in [0, 1]) within it and after maps within it times
their largest value (APRIL-GAN's map is a sum over layers, up to 4; the evaluation keeps after
maps in fp16, whose own rounding there is up to 2e-3).

    python -m benchmarks.bench_feature_cache                                   # tiny-random
    python -m benchmarks.bench_feature_cache --backbones tiny-random,ViT-L-14-336 --images 2

Written to ``results/bench_feature_cache.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.common import RESULTS, machine_line, print_table, random_encoder, write_csv
from normadd.detectors.aprilgan import AprilGanDetector
from normadd.evaluation.feature_cache import STORED_FORMATS, ImageRecord
from normadd.images import load_batch
from normadd.normality.addition import NormalityAddition
from normadd.normality.suppression import keep_factor
from normadd.prompts.text_embedding import TextEmbedder
from normadd.runtime import Runtime

NORMALITIES = ("broken", "contamination", "scratch")
BOTTLE_TEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_ad" / "bottle" / "test"
LIMIT = 1e-3


def maps_from_records(addition: NormalityAddition, records: list[ImageRecord]) -> tuple[Tensor, Tensor]:
    """Suppression (B, K, S, S) and after maps (B, K, S, S), as the evaluation computes them."""
    detector = addition.normality_detector
    tokens = torch.stack([r.tokens for r in records]).float()
    suppression = detector.suppression_from_projected(
        list(tokens.unbind(dim=1)), records[0].grid_size, list(addition.normalities.values())
    )
    before = torch.stack([r.before_map for r in records]).float()
    after = torch.stack(
        [before * keep_factor(suppression[:, k : k + 1], torch.ones(1)) for k in range(suppression.shape[1])], dim=1
    )
    return suppression, after


def bench(name: str, count: int) -> list[dict[str, object]]:
    """Rows for one backbone: every stored precision against fp32 tokens."""
    encoder = random_encoder(name, Runtime(torch.device("cpu"), "fp32"))
    detector = AprilGanDetector(encoder, "bottle", text_embedder=TextEmbedder(encoder, disk_cache=False))
    addition = NormalityAddition(detector, list(NORMALITIES))
    paths = sorted(BOTTLE_TEST.glob("*/*.png"))[:: max(1, 83 // count)][:count]
    _, images, _ = load_batch(paths, encoder.image_size)
    assert images is not None
    result = addition.explain(images, keep_projected=True)
    assert result.projected is not None and result.grid_size is not None
    rows: list[dict[str, object]] = []
    reference: tuple[Tensor, Tensor] | None = None
    for stored in ("float32", *STORED_FORMATS):
        records = [
            ImageRecord.from_outputs(
                result.detector_scores[i], result.before[i], [p[i] for p in result.projected], result.grid_size, stored
            )
            for i in range(images.shape[0])
        ]
        records = [ImageRecord.from_bytes(r.to_bytes()) for r in records]  # the disk round trip
        suppression, after = maps_from_records(addition, records)
        reference = reference or (suppression, after)
        diff_suppression = (suppression - reference[0]).abs().max().item()
        diff_after = (after - reference[1]).abs().max().item()
        diff_scores = (after.amax(dim=(-2, -1)) - reference[1].amax(dim=(-2, -1))).abs().max().item()
        before_max = reference[1].amax().item() or 1.0
        rows.append(
            {
                "backbone": name,
                "images": images.shape[0],
                "tokens_stored_as": stored,
                "MiB_per_image": f"{len(records[0].to_bytes()) / 2**20:.2f}",
                "max_diff_suppression": f"{diff_suppression:.1e}",
                "max_diff_after": f"{diff_after:.1e}",
                "max_diff_after_scores": f"{diff_scores:.1e}",
                "after_max": f"{before_max:.2f}",
                f"within_{LIMIT:g}": "yes" if diff_suppression <= LIMIT and diff_after <= LIMIT * before_max else "no",
            }
        )
        print("  ".join(str(v) for v in rows[-1].values()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="tiny-random")
    parser.add_argument("--images", type=int, default=4, help="bottle test images")
    args = parser.parse_args()
    print(f"# {machine_line(torch.device('cpu'))}")
    rows = [row for name in args.backbones.split(",") for row in bench(name, args.images)]
    print(f"\n## evaluation cache: map deviation from fp32 tokens per stored precision (limit {LIMIT:g})")
    print_table(rows)
    write_csv(rows, RESULTS / "bench_feature_cache.csv")
    print(f"wrote {RESULTS / 'bench_feature_cache.csv'}")


if __name__ == "__main__":
    main()
