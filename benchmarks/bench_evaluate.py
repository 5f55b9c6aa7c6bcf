"""Where ``normadd evaluate``'s time goes, and pixel AUROC/AUPRO now vs by scikit-learn's ``roc_curve``.

Runs the evaluation of one class (bottle by default) with the tiny random backbone and no feature
cache, timing the pixel metrics (masks read, AUROC and AUPRO of every group, before and after).
The same pixel rows are then computed a second time the way normadd did before (scikit-learn's
``roc_curve`` per metric and map, each its own sort) to give that time and the largest difference
between the two, in percentage points. Writes ``results/bench_evaluate.csv``.

    python -m benchmarks.bench_evaluate                     # bottle, tiny-random
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from sklearn.metrics import auc, roc_curve

from benchmarks.common import RESULTS, machine_line, print_table, write_csv
from normadd.config import LineConfig
from normadd.evaluation import runner
from normadd.evaluation.runner import ClassEvaluation, EvaluationSettings, Evaluator

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_ad"


def scikit_learn_pixel_metrics(
    masks: np.ndarray, maps: np.ndarray, weights: np.ndarray | None = None, max_fpr: float = 0.3
) -> tuple[float | None, float | None]:
    """Pixel AUROC and AUPRO as normadd computed them before: ``roc_curve`` twice, each with its sort."""
    labels = np.asarray(masks, dtype=bool).ravel()
    scores = np.asarray(maps, dtype=np.float32).ravel()
    fpr, tpr, _ = roc_curve(labels, scores)
    pixel_auroc = float(auc(fpr, tpr))
    region = (runner.metrics.region_weights(masks) if weights is None else weights).ravel().copy()
    region[~labels] = 1.0
    fpr, pro, _ = roc_curve(labels, scores, sample_weight=region)
    end = np.searchsorted(fpr, max_fpr, side="right")
    fpr_cut = np.concatenate([fpr[:end], [max_fpr]])
    pro_cut = np.concatenate([pro[:end], [np.interp(max_fpr, fpr, pro)]])
    return pixel_auroc, float(auc(fpr_cut, pro_cut) / max_fpr)


class TimedEvaluator(Evaluator):
    """An evaluator that times its pixel rows and recomputes them the earlier way for comparison."""

    pixel_seconds = 0.0
    earlier_seconds = 0.0
    largest_difference = 0.0

    def _pixel_rows(self, evaluation: ClassEvaluation, images: list, maps: runner._ClassMaps) -> None:  # type: ignore[override]
        start = time.perf_counter()
        super()._pixel_rows(evaluation, images, maps)
        self.pixel_seconds += time.perf_counter() - start
        now = list(evaluation.pixel)
        evaluation.pixel = []
        with mock.patch.object(runner.metrics, "pixel_metrics", scikit_learn_pixel_metrics):
            start = time.perf_counter()
            super()._pixel_rows(evaluation, images, maps)
            self.earlier_seconds += time.perf_counter() - start
        for ours, theirs in zip(now, evaluation.pixel, strict=True):
            for field in ("pixel_auroc_before", "pixel_auroc_after", "aupro_before", "aupro_after"):
                a, b = getattr(ours, field), getattr(theirs, field)
                if a is not None and b is not None:
                    self.largest_difference = max(self.largest_difference, abs(a - b))
        evaluation.pixel = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="bottle")
    parser.add_argument("--backbone", default="tiny-random")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["NORMADD_CACHE_DIR"] = cache
        line = LineConfig(class_name="evaluation", backbone=args.backbone)
        settings = EvaluationSettings(data=args.data, classes=args.classes.split(","), line=line, use_cache=False)
        evaluator = TimedEvaluator(settings)
        start = time.perf_counter()
        result = evaluator.run()
        wall = time.perf_counter() - start - evaluator.earlier_seconds  # the comparison is not part of evaluate
    groups = sum(len(c.pixel) for c in result.classes)
    earlier_wall = wall - evaluator.pixel_seconds + evaluator.earlier_seconds
    rows = [
        {
            "pixel_metrics": "normadd: one ranking per map (float16: no sort)",
            "classes": args.classes,
            "images": result.cost.images,
            "groups": groups,
            "seconds": f"{evaluator.pixel_seconds:.2f}",
            "evaluate_wall_s": f"{wall:.1f}",
            "share_of_evaluate": f"{100 * evaluator.pixel_seconds / wall:.1f}%",
            "max_diff_pp": "0 (reference)",
        },
        {
            "pixel_metrics": "before: scikit-learn roc_curve per metric",
            "classes": args.classes,
            "images": result.cost.images,
            "groups": groups,
            "seconds": f"{evaluator.earlier_seconds:.2f}",
            "evaluate_wall_s": f"{earlier_wall:.1f}",
            "share_of_evaluate": f"{100 * evaluator.earlier_seconds / earlier_wall:.1f}%",
            "max_diff_pp": f"{evaluator.largest_difference:.1e}",
        },
    ]
    print(f"# {machine_line(torch.device('cpu'))}")
    print(f"# {args.backbone}, load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    print_table(rows)
    write_csv(rows, RESULTS / "bench_evaluate.csv")
    print(f"wrote {RESULTS / 'bench_evaluate.csv'}")


if __name__ == "__main__":
    main()
