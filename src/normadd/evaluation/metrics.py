"""Image AUROC, pixel AUROC and AUPRO, on top of scikit-learn and SciPy.

Image AUROCs and ROC curves are scikit-learn's. Neither scikit-learn nor SciPy has AUPRO (the
per-region overlap curve of MVTec AD, Bergmann et al. 2021), so :func:`aupro` adds it: SciPy
labels the connected defect regions, and the PRO curve *is* a weighted ROC curve: give each
defect pixel the weight ``1 / (R · |region|)`` (R regions in all) and the true-positive rate at a
threshold becomes the mean over regions of the fraction of the region above it, while the
normal pixels give the false-positive rate. The area up to a false-positive rate of 0.3 is
divided by 0.3, the usual normalisation.

Pixel curves are exact but never re-sort: :func:`pixel_metrics` ranks the scores once and gets both
curves from per-score sums (``np.bincount``), ties grouped as scikit-learn groups them. The
evaluation keeps its maps in float16, which has at most 65,536 distinct values: their bit patterns,
reordered so that integer order is float order, *are* the ranks, so those maps are ranked with no
sort at all. Pixel AUROC and AUPRO then cost two linear passes over the pixels; a test compares them
with scikit-learn's figures.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score, roc_curve

from normadd.evaluation.protocol import has_both_labels

AUPRO_MAX_FPR = 0.3


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of image scores (1 = anomalous), or None when only one label occurs."""
    labels = np.asarray(labels)
    if not has_both_labels(labels):
        return None
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(false-positive rates, true-positive rates) of the ROC curve, or None with one label."""
    if not has_both_labels(np.asarray(labels)):
        return None
    fpr, tpr, _ = roc_curve(labels, np.asarray(scores, dtype=np.float64))
    return fpr, tpr


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """ROC AUC over all pixels: ``masks`` (N, H, W) bool, ``maps`` (N, H, W) scores."""
    return pixel_metrics(masks, maps, with_aupro=False)[0]


def score_ranks(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """Ranks of ``scores`` (ties share one) and the number of ranks: equal scores, equal ranks.

    float16 scores are ranked without sorting: their bit patterns, with negative numbers' bits
    flipped and positive numbers' sign bit set, sort as the floats do (65,536 ranks, some empty).
    Other dtypes are ranked by one sort (``np.unique``).
    """
    scores = np.asarray(scores).ravel()
    if scores.dtype == np.float16:
        bits = (scores + np.float16(0)).view(np.uint16)  # -0.0 + 0 is +0.0: one rank for zero
        ranks = np.where(bits & 0x8000, ~bits, bits | 0x8000)
        return ranks, 1 << 16
    _, ranks = np.unique(scores, return_inverse=True)
    return ranks.ravel(), int(ranks.max()) + 1 if ranks.size else 0


def _curve(ranks: np.ndarray, bins: int, positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) at every distinct score, highest score first.

    Args:
        ranks: Rank of every pixel's score (:func:`score_ranks`).
        bins: Number of ranks.
        positive: Weight of every pixel as a positive (0 for negatives).
        negative: Weight of every pixel as a negative (0 for positives).
    """
    tp = np.bincount(ranks, weights=positive, minlength=bins)[::-1]
    fp = np.bincount(ranks, weights=negative, minlength=bins)[::-1]
    used = (tp != 0) | (fp != 0)
    tps = np.concatenate([[0.0], np.cumsum(tp[used])])
    fps = np.concatenate([[0.0], np.cumsum(fp[used])])
    return fps / fps[-1], tps / tps[-1]


def _area_to(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """Area under the curve up to ``max_fpr`` (interpolated there), divided by ``max_fpr``."""
    end = np.searchsorted(fpr, max_fpr, side="right")
    tpr_at_end = np.interp(max_fpr, fpr, tpr)
    fpr_cut = np.concatenate([fpr[:end], [max_fpr]])
    tpr_cut = np.concatenate([tpr[:end], [tpr_at_end]])
    return float(np.trapezoid(tpr_cut, fpr_cut) / max_fpr)


def pixel_metrics(
    masks: np.ndarray,
    maps: np.ndarray,
    weights: np.ndarray | None = None,
    max_fpr: float = AUPRO_MAX_FPR,
    with_aupro: bool = True,
) -> tuple[float | None, float | None]:
    """Pixel AUROC and AUPRO from one ranking of the scores (exact; see the module doc).

    Args:
        masks: (N, H, W) bool ground truth.
        maps: (N, H, W) anomaly maps; float16 maps are ranked without a sort.
        weights: :func:`region_weights` of ``masks`` when already computed.
        max_fpr: Upper end of the false-positive rate AUPRO integrates over.
        with_aupro: False to compute the pixel AUROC only.

    Returns:
        (pixel AUROC, AUPRO), each None without defect pixels or without normal pixels.
    """
    labels = np.asarray(masks, dtype=bool).ravel()
    if not labels.any() or labels.all():
        return None, None
    ranks, bins = score_ranks(np.asarray(maps))
    negative = (~labels).astype(np.float64)
    fpr, tpr = _curve(ranks, bins, labels.astype(np.float64), negative)
    auroc = float(np.trapezoid(tpr, fpr))
    if not with_aupro:
        return auroc, None
    region = (region_weights(masks) if weights is None else np.asarray(weights)).ravel()
    fpr, pro = _curve(ranks, bins, region, negative)
    return auroc, _area_to(fpr, pro, max_fpr)


def region_weights(masks: np.ndarray) -> np.ndarray:
    """Per pixel: ``1 / (R · |region|)`` for defect pixels, 0 for normal ones.

    Regions are the 8-connected components of each image's mask, counted over all images.
    """
    masks = np.asarray(masks, dtype=bool)
    weights = np.zeros(masks.shape, dtype=np.float64)
    structure = np.ones((3, 3), dtype=bool)
    total_regions = 0
    for index, mask in enumerate(masks):
        regions, count = ndimage.label(mask, structure=structure)
        if count:
            total_regions += count
            region_sizes = np.bincount(regions.ravel())
            weights[index] = np.where(regions > 0, 1.0 / region_sizes[regions], 0.0)
    return weights / max(total_regions, 1)


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = AUPRO_MAX_FPR) -> float | None:
    """Area under the per-region overlap curve up to ``max_fpr``, divided by ``max_fpr``.

    Args:
        masks: (N, H, W) bool ground truth.
        maps: (N, H, W) anomaly maps.
        max_fpr: Upper end of the false-positive rate integrated over.

    Returns:
        AUPRO in [0, 1], or None without defect pixels or without normal pixels.
    """
    return pixel_metrics(masks, maps, max_fpr=max_fpr)[1]
