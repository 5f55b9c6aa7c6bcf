"""Preview time on retained parts: stored features vs an image pass, and the storage precision.

For each backbone (random weights at the real size: the same compute as trained weights) a line
retains N bottle images (the 83 test images, then ``train/good``) with their features; then
``preview`` scores a new text on the last N parts from the stored features, and on the same
image files with an image pass. The text encoding of the new text is timed on its own
(``text_s``; a preview pays it once). ``preview_s`` is wall time, ``preview_cpu_s`` the
process's CPU time (all threads): on a shared machine the wall time also counts other
processes' turns. The second table compares the candidate's suppression maps and scores from
stored features at each precision with those of a fresh pass (max abs diff), and gives the
bytes stored per image.

At ViT-L-14-336 an image pass takes ~10 s per image on this 2-core CPU: ``--passes`` images get
one (for the image-pass row, extrapolated linearly to N, and for the precision table); the
other retained parts reuse those passes' features under their own image, which times the
stored-features preview exactly (same shapes, N distinct files read and hash-checked).

    python benchmarks/bench_preview.py                                  # tiny-random and ViT-L-14-336
    python benchmarks/bench_preview.py --backbones tiny-random --parts 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, machine_line, print_table, random_encoder, write_csv
from normadd.detectors.aprilgan import AprilGanDetector
from normadd.images import load_image
from normadd.normality.addition import NormalityAddition
from normadd.normality.text_normality import NormalityDetector
from normadd.prompts.text_embedding import TextEmbedder
from normadd.registry.line_model import LineModel
from normadd.registry.preview import preview, suppression_from_stored
from normadd.registry.retention import RetainedFeatures, RetentionStore, features_from_bytes, features_to_bytes
from normadd.registry.store import LineRecord, Registry, ThresholdRecord
from normadd.runtime import resolve_runtime

BOTTLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_ad" / "bottle"
TEXTS = ("scratch", "dent", "crack", "stain", "chip", "smudge")
PRECISIONS = ("float32", "float16", "int8")


def bottle_images(count: int) -> list[Path]:
    """``count`` bottle images: the test set (83, groups interleaved), then ``train/good``."""
    groups = [sorted(p.glob("*.png")) for p in sorted((BOTTLE / "test").iterdir()) if p.is_dir()]
    interleaved = [path for row in zip(*groups, strict=False) for path in row]
    rest = [path for group in groups for path in group if path not in interleaved]
    return (interleaved + rest + sorted((BOTTLE / "train" / "good").glob("*.png")))[:count]


def build_line(name: str, folder: Path, precision: str, runtime: object) -> tuple[Registry, LineModel]:
    """A registry with one retaining line and its model on a random-weight encoder."""
    registry = Registry(folder / "normadd.db")
    record = LineRecord("bench", "bottle", backbone=name, settings={"retain": {"images": 1000, "features": precision}})
    registry.create_line(record, "bench")
    encoder = random_encoder(name, runtime)  # type: ignore[arg-type]
    embedder = TextEmbedder(encoder, disk_cache=False)
    detector = AprilGanDetector(encoder, "bottle", text_embedder=embedder)
    normality_detector = NormalityDetector(
        encoder, "bottle", projections=detector.projections, text_embedder=embedder
    )
    model = LineModel(registry.line("bench"), NormalityAddition(detector, normality_detector=normality_detector))
    model.refresh(registry)
    return registry, model


def bench(name: str, parts: int, passes: int, device: str) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    runtime = resolve_runtime(device, "fp32")
    folder = Path(tempfile.mkdtemp(prefix=f"bench-preview-{name}-"))
    registry, model = build_line(name, folder, "float16", runtime)
    paths = bottle_images(parts)
    passed = paths[: min(passes, parts)]
    store = RetentionStore.for_line(registry, "bench")
    fresh: list[tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]] = []
    start = time.perf_counter()
    for chunk_start in range(0, len(passed), 4):
        chunk = passed[chunk_start : chunk_start + 4]
        images = torch.stack([load_image(p, model.input_size) for p in chunk])
        result = model.explain(images, keep_projected=True)
        assert result.projected is not None and result.grid_size is not None
        for i in range(len(chunk)):
            fresh.append((result.before[i], [t[i] for t in result.projected], result.grid_size))
    pass_seconds = time.perf_counter() - start
    print(f"{name}: {len(passed)} image passes in {pass_seconds:.1f} s", flush=True)
    for index, path in enumerate(paths):  # parts beyond the passed ones reuse a pass's features
        before, projected, grid = fresh[index % len(fresh)]
        features = RetainedFeatures(before, projected, grid)
        store.retain([(path.read_bytes(), path.name)], [features], model.features_identity)
    scores = sorted(float(f[0].max()) for f in fresh)
    registry.set_threshold("bench", ThresholdRecord(scores[len(scores) // 2], None, "set"), "bench")

    text_times, stored_times, stored_cpu = [], [], []
    for text in TEXTS[:3]:
        report = preview(model, registry, text, "bench", recent=parts)
        text_times.append(report.text_seconds)
        stored_times.append(report.scoring_seconds)
        stored_cpu.append(report.scoring_cpu_seconds)
        assert all(p.source == "stored features" for p in report.parts) and len(report.parts) == parts
    image_report = preview(model, registry, TEXTS[3], "bench", images=passed)
    per_image = image_report.scoring_seconds / len(passed)
    per_image_cpu = image_report.scoring_cpu_seconds / len(passed)
    extrapolated = "" if len(passed) == parts else " (extrapolated)"
    usage = store.usage()
    median = sorted(stored_times)[1]
    rows = [
        {
            "backbone": name,
            "size": model.input_size,
            "parts": parts,
            "mode": "stored features (float16)",
            "preview_s": f"{median:.3f}",
            "preview_cpu_s": f"{sorted(stored_cpu)[1]:.3f}",
            "measured_on": parts,
            "text_s": f"{sorted(text_times)[1]:.3f}",
            "retained_MB": f"{usage.total_bytes / 1e6:.1f}",
        },
        {
            "backbone": name,
            "size": model.input_size,
            "parts": parts,
            "mode": "image pass",
            "preview_s": f"{per_image * parts:.3f}{extrapolated}",
            "preview_cpu_s": f"{per_image_cpu * parts:.3f}{extrapolated}",
            "measured_on": len(passed),
            "text_s": f"{image_report.text_seconds:.3f}",
            "retained_MB": "-",
        },
    ]

    detector = model.addition.normality_detector
    candidate = detector.make_normality("scratch", 1.0)
    precision_rows = []
    for precision in PRECISIONS:
        map_diff = score_diff = 0.0
        size = 0
        for before, projected, grid in fresh:
            blob = features_to_bytes(RetainedFeatures(before, projected, grid), precision, "bench")
            size = len(blob)
            stored = features_from_bytes(blob)
            batch = [t.unsqueeze(0) for t in projected]
            from_pass = detector.suppression_from_projected(batch, grid, [candidate])[0, 0]
            from_store = suppression_from_stored(detector, [stored], [candidate])[0, 0]  # what a preview reads
            map_diff = max(map_diff, float((from_pass - from_store).abs().max()))
            score_pass = float((before * (1 - from_pass)).max())
            score_store = float((stored.before * (1 - from_store)).max())
            score_diff = max(score_diff, abs(score_pass - score_store))
        precision_rows.append(
            {
                "backbone": name,
                "precision": precision,
                "images": len(fresh),
                "max_abs_diff_map": f"{map_diff:.2e}",
                "max_abs_diff_score": f"{score_diff:.2e}",
                "features_bytes_per_image": size,
            }
        )
    registry.close()
    return rows, precision_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["tiny-random", "ViT-L-14-336"])
    parser.add_argument("--parts", type=int, default=100)
    parser.add_argument("--passes", type=int, default=None, help="Image passes (default: all parts; 4 at ViT-L).")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"# {machine_line(torch.device(args.device))}")
    timing: list[dict[str, object]] = []
    precision: list[dict[str, object]] = []
    for name in args.backbones:
        passes = args.passes or (4 if name.startswith("ViT-L") else args.parts)
        rows, precision_rows = bench(name, args.parts, passes, args.device)
        timing += rows
        precision += precision_rows
        print_table(rows)
        print_table(precision_rows)
    print()
    print_table(timing)
    print()
    print_table(precision)
    write_csv(timing, RESULTS / "bench_preview.csv")
    write_csv(precision, RESULTS / "bench_preview_precision.csv")


if __name__ == "__main__":
    main()
