"""APRIL-GAN's focal and dice losses on small hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from normadd.training.losses import FOCAL_SMOOTH, aprilgan_loss, dice_loss, focal_loss


def _square_mask(size: int = 8) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[0, 2:5, 3:7] = 1
    return mask


def test_perfect_prediction_gives_zero_dice_loss() -> None:
    mask = _square_mask()
    assert float(dice_loss(mask.clone(), mask)) == pytest.approx(0.0, abs=1e-7)


def test_empty_mask_and_empty_prediction_give_zero_dice_loss() -> None:
    empty = torch.zeros(2, 8, 8)
    assert float(dice_loss(empty, empty)) == pytest.approx(0.0, abs=1e-7)


def test_disjoint_prediction_gives_almost_full_dice_loss() -> None:
    mask = _square_mask()
    prediction = torch.zeros_like(mask)
    prediction[0, 6:8, 0:2] = 1  # 4 pixels, none in the 12-pixel mask
    # 1 - (2 * 0 + 1) / (4 + 12 + 1)
    assert float(dice_loss(prediction, mask)) == pytest.approx(1 - 1 / 17)


def test_dice_loss_is_averaged_per_image() -> None:
    perfect = _square_mask()
    wrong = torch.zeros_like(perfect)
    both_predictions = torch.cat([perfect, wrong])
    both_masks = torch.cat([perfect, perfect])
    expected = (0.0 + (1 - 1 / 13)) / 2  # second image: 1 - (0 + 1) / (0 + 12 + 1)
    assert float(dice_loss(both_predictions, both_masks)) == pytest.approx(expected)


def test_confident_correct_prediction_gives_zero_focal_loss() -> None:
    mask = _square_mask()
    probabilities = torch.stack([1 - mask, mask], dim=1)
    assert float(focal_loss(probabilities, mask)) == pytest.approx(0.0, abs=1e-7)


def test_focal_loss_of_an_undecided_prediction_matches_the_formula() -> None:
    mask = _square_mask()
    probabilities = torch.full((1, 2, 8, 8), 0.5)
    # The smoothed one-hot target is (1 - s, s), so p_t = 0.5 (1 - s) + 0.5 s + s = 0.5 + s.
    p_t = 0.5 + FOCAL_SMOOTH
    expected = -((1 - p_t) ** 2) * math.log(p_t)
    assert float(focal_loss(probabilities, mask)) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.25 * math.log(2), rel=1e-3)


def test_focal_loss_down_weights_easy_pixels_against_cross_entropy() -> None:
    target = torch.ones(1, 1, 1)
    easy = torch.tensor([0.1, 0.9]).view(1, 2, 1, 1)
    hard = torch.tensor([0.9, 0.1]).view(1, 2, 1, 1)
    easy_loss, hard_loss = float(focal_loss(easy, target)), float(focal_loss(hard, target))
    assert easy_loss == pytest.approx(0.1**2 * -math.log(0.9), rel=1e-3)  # (1 - p_t)^2 x cross-entropy
    assert hard_loss == pytest.approx(0.9**2 * -math.log(0.1), rel=1e-3)
    assert hard_loss / easy_loss > 100


def test_aprilgan_loss_sums_focal_and_dice_over_layers() -> None:
    mask = _square_mask()
    abnormal = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    one_layer = focal_loss(torch.stack([1 - abnormal, abnormal], dim=1), mask) + dice_loss(abnormal, mask)
    assert float(aprilgan_loss([abnormal, abnormal, abnormal], mask)) == pytest.approx(3 * float(one_layer))


def test_loss_gradient_raises_the_defect_probability_inside_the_mask() -> None:
    mask = _square_mask()
    abnormal = torch.full((1, 8, 8), 0.5, requires_grad=True)
    aprilgan_loss([abnormal], mask).backward()
    assert abnormal.grad is not None
    assert bool((abnormal.grad[mask.bool()] < 0).all())  # descending raises p inside
    assert bool((abnormal.grad[~mask.bool()] > 0).all())  # and lowers it outside
