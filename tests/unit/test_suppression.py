"""Normality addition as formulas: A_final = A ⊙ Π_k (1 − s_k · A_sup_k), on hand-made maps."""

from __future__ import annotations

import math

import pytest
import torch

from normadd.errors import InvalidMapError
from normadd.normality import check_map, keep_factor, resize_maps, suppress


def random_maps(seed: int, batch: int = 2, k: int = 3, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """An anomaly map in [0, 4] (APRIL-GAN's range) and k suppression maps in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    anomaly = 4.0 * torch.rand(batch, size, size, generator=generator)
    suppression = torch.rand(batch, k, size, size, generator=generator)
    return anomaly, suppression


# --- suppress: one normality --------------------------------------------------


def test_full_strength_is_the_papers_formula_a_times_one_minus_a_sup() -> None:
    anomaly = torch.tensor([[2.0, 4.0]])
    suppression = torch.tensor([[0.5, 1.0]])
    assert torch.equal(suppress(anomaly, suppression, 1.0), torch.tensor([[1.0, 0.0]]))


def test_half_strength_suppresses_half_as_much() -> None:
    anomaly = torch.tensor([[2.0, 4.0]])
    suppression = torch.tensor([[0.5, 1.0]])
    # 2 * (1 - 0.5 * 0.5) = 1.5 and 4 * (1 - 0.5 * 1) = 2
    assert torch.equal(suppress(anomaly, suppression, 0.5), torch.tensor([[1.5, 2.0]]))


def test_default_strength_is_one() -> None:
    anomaly, suppression = random_maps(0, k=1)
    assert torch.equal(suppress(anomaly, suppression[:, 0]), suppress(anomaly, suppression[:, 0], 1.0))


def test_strength_zero_changes_nothing() -> None:
    anomaly, suppression = random_maps(1, k=1)
    assert torch.equal(suppress(anomaly, suppression[:, 0], 0.0), anomaly)


def test_zero_suppression_map_changes_nothing() -> None:
    anomaly, _ = random_maps(2)
    assert torch.equal(suppress(anomaly, torch.zeros_like(anomaly), 1.0), anomaly)


def test_full_suppression_at_full_strength_clears_the_map() -> None:
    anomaly, _ = random_maps(3)
    assert torch.equal(suppress(anomaly, torch.ones_like(anomaly), 1.0), torch.zeros_like(anomaly))


@pytest.mark.parametrize("strength", [0.0, 0.3, 1.0])
def test_after_never_exceeds_before(strength: float) -> None:
    anomaly, suppression = random_maps(4, k=1, size=32)
    after = suppress(anomaly, suppression[:, 0], strength)
    assert (after <= anomaly).all()
    assert (after >= 0).all()


def test_higher_strength_never_suppresses_less() -> None:
    anomaly, suppression = random_maps(5, k=1, size=16)
    weak = suppress(anomaly, suppression[:, 0], 0.2)
    strong = suppress(anomaly, suppression[:, 0], 0.9)
    assert (strong <= weak).all()


@pytest.mark.parametrize("strength", [-0.1, 1.0001, 2.0, math.nan, math.inf])
def test_strength_outside_zero_one_raises(strength: float) -> None:
    anomaly = torch.tensor([[2.0, 4.0]])
    with pytest.raises(ValueError, match="strength"):
        suppress(anomaly, torch.zeros_like(anomaly), strength)


def test_maps_of_different_shapes_raise() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        suppress(torch.ones(1, 4, 4), torch.ones(1, 8, 8), 1.0)


# --- keep_factor: several normalities -----------------------------------------


def test_keep_factor_by_hand() -> None:
    suppression = torch.tensor([[[[0.5, 1.0]], [[0.5, 0.0]]]])  # (B=1, K=2, H=1, W=2)
    strengths = torch.tensor([1.0, 0.5])
    # (1 - 1 * 0.5) * (1 - 0.5 * 0.5) = 0.375 and (1 - 1 * 1) * (1 - 0.5 * 0) = 0
    assert torch.equal(keep_factor(suppression, strengths), torch.tensor([[[0.375, 0.0]]]))


def test_keep_factor_of_no_normality_is_one() -> None:
    keep = keep_factor(torch.zeros(3, 0, 5, 7), torch.zeros(0))
    assert keep.shape == (3, 5, 7)
    assert torch.equal(keep, torch.ones(3, 5, 7))


def test_keep_factor_lies_in_zero_one() -> None:
    _, suppression = random_maps(6, k=4, size=16)
    keep = keep_factor(suppression, torch.tensor([1.0, 0.0, 0.5, 0.25]))
    assert keep.shape == (2, 16, 16)
    assert (keep >= 0).all() and (keep <= 1).all()


def test_all_strengths_zero_keep_everything() -> None:
    _, suppression = random_maps(7, k=3)
    assert torch.equal(keep_factor(suppression, torch.zeros(3)), torch.ones(2, 8, 8))


def test_product_of_several_normalities_equals_applying_them_one_by_one() -> None:
    anomaly, suppression = random_maps(8, k=3, size=16)
    strengths = [1.0, 0.5, 0.25]
    at_once = anomaly * keep_factor(suppression, torch.tensor(strengths))
    one_by_one = anomaly
    for k, strength in enumerate(strengths):
        one_by_one = suppress(one_by_one, suppression[:, k], strength)
    assert torch.allclose(at_once, one_by_one, atol=1e-6, rtol=0)


def test_order_of_normalities_does_not_matter() -> None:
    anomaly, suppression = random_maps(9, k=3)
    strengths = torch.tensor([1.0, 0.5, 0.25])
    reverse = torch.tensor([2, 1, 0])
    forward = anomaly * keep_factor(suppression, strengths)
    backward = anomaly * keep_factor(suppression[:, reverse], strengths[reverse])
    assert torch.allclose(forward, backward, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(5))
def test_after_never_exceeds_before_with_several_normalities(seed: int) -> None:
    anomaly, suppression = random_maps(seed, batch=3, k=4, size=24)
    strengths = torch.rand(4, generator=torch.Generator().manual_seed(100 + seed))
    after = anomaly * keep_factor(suppression, strengths)
    assert (after <= anomaly).all()
    assert (after >= 0).all()


def test_adding_a_normality_never_raises_the_map() -> None:
    anomaly, suppression = random_maps(10, k=3)
    strengths = torch.tensor([0.7, 0.4, 1.0])
    two = anomaly * keep_factor(suppression[:, :2], strengths[:2])
    three = anomaly * keep_factor(suppression, strengths)
    assert (three <= two).all()


# --- check_map ----------------------------------------------------------------


def test_a_valid_map_passes_unchanged() -> None:
    maps = torch.tensor([[[0.0, 1.5], [2.0, 4.0]]])
    assert check_map(maps, "the map") is maps


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_infinite_map_raises_invalid_map_error(bad: float) -> None:
    maps = torch.ones(1, 4, 4)
    maps[0, 2, 3] = bad
    with pytest.raises(InvalidMapError, match="the detector's map has NaN or infinite"):
        check_map(maps, "the detector's map")


def test_negative_map_raises_invalid_map_error() -> None:
    maps = torch.ones(1, 4, 4)
    maps[0, 0, 0] = -1e-3
    with pytest.raises(InvalidMapError, match="negative"):
        check_map(maps, "the map")


def test_invalid_map_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        check_map(torch.tensor([math.nan]), "the map")


# --- resize_maps --------------------------------------------------------------


def test_maps_at_the_size_already_are_returned_as_they_are() -> None:
    maps = torch.rand(2, 16, 16)
    assert resize_maps(maps, 16) is maps


def test_resize_gives_square_maps_of_the_size() -> None:
    assert resize_maps(torch.rand(3, 60, 80), 32).shape == (3, 32, 32)


def test_resize_is_bilinear_with_half_pixel_centres_by_hand() -> None:
    maps = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    # align_corners=False: output columns sample x = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (to 1)
    expected = torch.tensor([0.0, 0.25, 0.75, 1.0]).expand(4, 4).unsqueeze(0)
    assert torch.allclose(resize_maps(maps, 4), expected, atol=1e-7, rtol=0)


def test_resize_keeps_values_within_their_range() -> None:
    maps = 4.0 * torch.rand(2, 10, 10, generator=torch.Generator().manual_seed(11))
    for size in (7, 32, 256):
        resized = resize_maps(maps, size)
        assert resized.min() >= maps.min() - 1e-6
        assert resized.max() <= maps.max() + 1e-6


def test_resize_keeps_a_constant_map_constant() -> None:
    resized = resize_maps(torch.full((1, 9, 13), 2.5), 256)
    assert torch.allclose(resized, torch.full((1, 256, 256), 2.5))
