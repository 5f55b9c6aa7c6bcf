"""Metrics: library AUROCs, and AUPRO as a region-weighted ROC curve checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from normadd.evaluation.metrics import aupro, pixel_auroc, pixel_metrics, region_weights, roc_points, score_ranks


def _two_regions() -> np.ndarray:
    """One 6x6 image with a 1-pixel region and a 3-pixel region."""
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 0, 0] = True
    masks[0, 4, 2:5] = True
    return masks


def test_pixel_auroc_equals_scikit_learn_on_the_flattened_pixels() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 16, 16)) < 0.2
    maps = rng.random((3, 16, 16)).astype(np.float32)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-6)


def test_pixel_auroc_needs_normal_and_defect_pixels() -> None:
    assert pixel_auroc(np.zeros((1, 4, 4), dtype=bool), np.ones((1, 4, 4))) is None


def test_every_region_weighs_the_same_whatever_its_size() -> None:
    weights = region_weights(_two_regions())
    assert weights[0, 0, 0] == pytest.approx(1 / 2)
    assert weights[0, 4, 2:5].tolist() == pytest.approx([1 / 6] * 3)
    assert weights.sum() == pytest.approx(1.0)


def test_aupro_is_one_when_every_defect_pixel_outscores_every_normal_pixel() -> None:
    masks = _two_regions()
    assert aupro(masks, masks.astype(np.float32) + 0.1) == pytest.approx(1.0)


def test_aupro_averages_regions_not_pixels() -> None:
    # The small region is found (above every normal pixel), the large one is missed (below all).
    # Per region that is 1/2 at every false-positive rate, so AUPRO = 0.5, while a pixel-wise
    # curve would give 1/4 (one of four defect pixels).
    masks = _two_regions()
    maps = np.full(masks.shape, 0.5, dtype=np.float32)
    maps[0, 0, 0] = 1.0
    maps[0, 4, 2:5] = 0.0
    assert aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_of_random_maps_is_near_the_diagonal_area() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((10, 64, 64), dtype=bool)
    masks[:, 10:30, 10:30] = True
    # Area under PRO = FPR up to 0.3, divided by 0.3: 0.15.
    assert aupro(masks, rng.random(masks.shape)) == pytest.approx(0.15, abs=0.02)


def test_roc_points_start_at_the_origin_and_end_at_one() -> None:
    points = roc_points(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert points is not None
    fpr, tpr = points
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert roc_points(np.array([0, 0]), np.array([0.1, 0.2])) is None


def _defect_maps(dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """20 images of 64 x 64 with rectangular defects and maps that partly find them, with ties."""
    rng = np.random.default_rng(1)
    masks = np.zeros((20, 64, 64), dtype=bool)
    for image in range(14):
        top, left = rng.integers(0, 48, 2)
        masks[image, top : top + rng.integers(2, 16), left : left + rng.integers(2, 16)] = True
    maps = rng.random(masks.shape) + 0.6 * masks
    maps[:, :8] = 0.25  # a block of tied scores
    return masks, maps.astype(dtype)


def _scikit_learn_aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """The definition straight from scikit-learn's weighted ROC curve, with its own sort."""
    from sklearn.metrics import auc, roc_curve

    labels = masks.ravel()
    weights = region_weights(masks).ravel()
    weights[~labels] = 1.0
    fpr, pro, _ = roc_curve(labels, maps.ravel().astype(np.float64), sample_weight=weights)
    end = np.searchsorted(fpr, max_fpr, side="right")
    fpr_cut = np.concatenate([fpr[:end], [max_fpr]])
    pro_cut = np.concatenate([pro[:end], [np.interp(max_fpr, fpr, pro)]])
    return float(auc(fpr_cut, pro_cut) / max_fpr)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_pixel_metrics_match_scikit_learn_within_a_tenth_of_a_point(dtype: type) -> None:
    masks, maps = _defect_maps(dtype)
    auroc, pro = pixel_metrics(masks, maps)
    expected_auroc = roc_auc_score(masks.ravel(), maps.ravel().astype(np.float64))
    assert 0.6 < expected_auroc < 0.99  # neither trivial nor random
    # Exact ranking: the figures agree to float rounding, far inside the 0.1 percentage point promised.
    assert abs(100 * auroc - 100 * expected_auroc) < 1e-6
    assert abs(100 * pro - 100 * _scikit_learn_aupro(masks, maps)) < 1e-6


def test_float16_ranks_follow_the_float_order_with_one_rank_for_both_zeros() -> None:
    values = np.array([-2.0, -0.5, -0.0, 0.0, 1e-4, 0.5, 0.5, 3.0, np.inf], dtype=np.float16)
    ranks, bins = score_ranks(values)
    assert bins == 1 << 16
    assert ranks[2] == ranks[3] and ranks[5] == ranks[6]
    assert np.all(np.diff(ranks[[0, 1, 2, 4, 5, 7, 8]].astype(np.int64)) > 0)
