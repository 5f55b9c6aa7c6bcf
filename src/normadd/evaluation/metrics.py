"""Image AUROC, pixel AUROC and AUPRO, on top of scikit-learn and SciPy.

AUROCs and ROC curves are scikit-learn's (pixel AUROC as ``auc(roc_curve(...))``, which skips
``roc_auc_score``'s label checks over millions of pixels; torchmetrics would add a 3 s import
for the same exact numbers). Neither library has AUPRO (the per-region overlap curve of MVTec
AD, Bergmann et al. 2021), so :func:`aupro` adds the minimum on top of scikit-learn: SciPy
labels the connected defect regions, and the PRO curve *is* a weighted ROC curve: give each
defect pixel the weight ``1 / (R · |region|)`` (R regions in all) and the true-positive rate at a
threshold becomes the mean over regions of the fraction of the region above it, while the
normal pixels give the false-positive rate. The area up to a false-positive rate of 0.3 is
divided by 0.3, the usual normalisation.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc, roc_auc_score, roc_curve

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
    labels = np.asarray(masks, dtype=bool).ravel()
    if not labels.any() or labels.all():
        return None
    fpr, tpr, _ = roc_curve(labels, np.asarray(maps, dtype=np.float32).ravel())
    return float(auc(fpr, tpr))


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
    labels = np.asarray(masks, dtype=bool).ravel()
    if not labels.any() or labels.all():
        return None
    weights = region_weights(masks).ravel()
    weights[~labels] = 1.0  # normal pixels count equally towards the false-positive rate
    fpr, pro, _ = roc_curve(labels, np.asarray(maps, dtype=np.float32).ravel(), sample_weight=weights)
    end = np.searchsorted(fpr, max_fpr, side="right")
    pro_at_end = np.interp(max_fpr, fpr, pro)
    fpr_cut = np.concatenate([fpr[:end], [max_fpr]])
    pro_cut = np.concatenate([pro[:end], [pro_at_end]])
    return float(auc(fpr_cut, pro_cut) / max_fpr)
