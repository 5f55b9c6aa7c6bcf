"""Metrics: library AUROCs, and AUPRO as a region-weighted ROC curve checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from normadd.evaluation.metrics import aupro, pixel_auroc, region_weights, roc_points


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
