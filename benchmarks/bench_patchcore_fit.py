"""PatchCore's coreset side by side: anomalib 2.7's ``KCenterGreedy``, normadd exact and normadd fast.

All three select 10 % of the same patch features: WideResNet-50 (random weights) layer2+layer3
features of the first ``--images`` bottle training images (1,024 features each at 256 px). Quality
needs no trained weights: the coverage radius (the largest distance from any feature to its nearest
coreset feature) and the mean nearest-coreset distance, measured in the full feature space. Also the
one-row-per-step loop normadd used before (same picks as exact). Writes
``results/bench_patchcore_fit.csv``.

    python -m benchmarks.bench_patchcore_fit                 # 40 images: 40,960 features
    python -m benchmarks.bench_patchcore_fit --images 209    # the full bottle training set (hours for anomalib)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, machine_line, print_table, write_csv
from normadd.detectors.coreset import greedy_coreset, johnson_lindenstrauss_dim, sparse_random_projection
from normadd.detectors.patchcore import PatchCoreDetector
from normadd.detectors.reference import find_reference_images, load_reference_images

BOTTLE_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_ad" / "bottle" / "train" / "good"
RATIO = 0.1


def features_of(count: int) -> tuple[torch.Tensor, float]:
    """Patch features (N, 1536) of the first ``count`` bottle training images, and the seconds it took."""
    detector = PatchCoreDetector("wide_resnet50_2")
    paths = find_reference_images(BOTTLE_TRAIN)[:count]
    start = time.perf_counter()
    images = load_reference_images(paths, detector.input_size)
    parts = []
    for first in range(0, len(images), 8):
        embedding = detector.embed(images[first : first + 8])
        parts.append(embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1]))
    return torch.cat(parts), time.perf_counter() - start


def plain_greedy(embeddings: torch.Tensor, ratio: float, seed: int = 0) -> torch.Tensor:
    """The coreset normadd had before the pruned update: one full matrix-vector product per pick."""
    n, dims = embeddings.shape
    generator = torch.Generator().manual_seed(seed)
    features = embeddings @ sparse_random_projection(dims, johnson_lindenstrauss_dim(n), generator)
    squared_norms = (features * features).sum(dim=1)
    index = int(torch.randint(n, (1,), generator=generator))
    selected = torch.empty(int(n * ratio), dtype=torch.long)
    min_distances = torch.full((n,), float("inf"))
    for step in range(len(selected)):
        selected[step] = index
        distances = (squared_norms - 2 * (features @ features[index]) + squared_norms[index]).clamp_min_(0)
        min_distances = torch.minimum(min_distances, distances)
        min_distances[index] = 0.0
        index = int(torch.argmax(min_distances))
    return selected


def anomalib_greedy(embeddings: torch.Tensor, ratio: float, seed: int = 0, threads: int | None = None) -> torch.Tensor:
    """The ``KCenterGreedy`` of anomalib 2.7 (its own sparse random projection, eps 0.9; imported beforehand).

    ``threads`` sets torch's thread count for the run (1: no thread wake-ups between its small steps).
    """
    from anomalib.models.components.sampling import KCenterGreedy

    torch.manual_seed(seed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
            return torch.tensor(KCenterGreedy(embeddings, ratio).select_coreset_idxs())
    finally:
        torch.set_num_threads(before)


def coverage(features: torch.Tensor, indices: torch.Tensor) -> tuple[float, float]:
    """(largest, mean) distance from every feature to its nearest coreset feature, in the full space."""
    coreset = features[indices].double()
    nearest = torch.cat([torch.cdist(chunk.double(), coreset).amin(dim=1) for chunk in features.split(4096)])
    return float(nearest.max()), float(nearest.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="Bottle training images (1,024 features each).")
    parser.add_argument("--skip-plain", action="store_true", help="Leave out normadd's earlier one-row-per-step loop.")
    args = parser.parse_args()
    import anomalib.models.components.sampling  # noqa: F401 (its import, seconds, is not timed)

    load_before = os.getloadavg()
    features, extract_s = features_of(args.images)
    print(f"# {machine_line(torch.device('cpu'))}")
    print(f"# {features.shape[0]} x {features.shape[1]} features of {args.images} images ({extract_s:.0f} s)")
    runs = [
        (f"anomalib 2.7 KCenterGreedy ({torch.get_num_threads()} threads)", lambda: anomalib_greedy(features, RATIO)),
        ("anomalib 2.7 KCenterGreedy (1 thread)", lambda: anomalib_greedy(features, RATIO, threads=1)),
    ]
    if not args.skip_plain:
        runs.append(("normadd one row per step (before)", lambda: plain_greedy(features, RATIO)))
    runs.append(("normadd exact (default)", lambda: greedy_coreset(features, RATIO, method="exact")))
    runs.append(("normadd fast", lambda: greedy_coreset(features, RATIO, method="fast")))
    rows: list[dict[str, object]] = []
    exact_radius = None
    for name, run in runs:
        start = time.perf_counter()
        indices = run()
        seconds = time.perf_counter() - start
        radius, mean = coverage(features, indices)
        if name.startswith("normadd exact"):
            exact_radius = radius
        rows.append({"method": name, "features": features.shape[0], "coreset": len(indices), "seconds": seconds,
                     "radius": radius, "mean_distance": mean})
        print(f"done: {name} {seconds:.1f} s", flush=True)
    base = rows[0]["seconds"]
    assert exact_radius is not None
    table = [
        {
            **row,
            "seconds": f"{row['seconds']:.1f}",
            "radius": f"{row['radius']:.3f}",
            "radius_vs_exact": f"{float(row['radius']) / exact_radius:.3f}",  # type: ignore[arg-type]
            "mean_distance": f"{row['mean_distance']:.3f}",
            "speed_up_vs_anomalib": f"{float(base) / float(row['seconds']):.1f}x",  # type: ignore[arg-type]
        }
        for row in rows
    ]
    load_after = os.getloadavg()
    print(f"# load average (1, 5, 15 min) before {load_before}, after {load_after}; 2-core CPU shared")
    print("# speed_up_vs_anomalib: against the first row (anomalib with torch's default threads)")
    print_table(table)
    write_csv(table, RESULTS / "bench_patchcore_fit.csv")
    print(f"wrote {RESULTS / 'bench_patchcore_fit.csv'}")


if __name__ == "__main__":
    main()
