"""WinCLIP's pure functions on small hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from normadd.detectors.winclip import (
    class_probability,
    compositional_prompts,
    harmonic_aggregation,
    visual_association,
    window_indices,
)


def test_windows_of_a_3x3_grid_are_the_four_2x2_squares_row_major() -> None:
    assert window_indices((3, 3), 2).tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    assert window_indices((4, 5), 3).shape == (2 * 3, 9)


def test_a_window_larger_than_the_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        window_indices((2, 2), 3)


def test_patch_score_is_the_harmonic_mean_of_the_windows_covering_it() -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    patch = harmonic_aggregation(scores, window_indices((3, 3), 2), (3, 3))[0]
    assert patch[0, 0] == pytest.approx(1.0)  # only window 0
    assert patch[0, 1] == pytest.approx(2 / (1 / 1 + 1 / 2))  # windows 0 and 1
    assert patch[1, 1] == pytest.approx(4 / (1 / 1 + 1 / 2 + 1 / 3 + 1 / 4))  # all four
    assert patch[2, 2] == pytest.approx(4.0)


def test_a_zero_window_score_makes_its_patches_zero_not_nan() -> None:
    patch = harmonic_aggregation(torch.tensor([[0.0, 1.0, 1.0, 1.0]]), window_indices((3, 3), 2), (3, 3))[0]
    assert patch[0, 0] == 0 and patch[1, 1] == 0 and patch[2, 2] == 1
    assert torch.isfinite(patch).all()


def test_class_probability_is_a_tempered_softmax_of_cosines() -> None:
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[3.0, 3.0], [0.0, 2.0]])
    probability = class_probability(image, texts, temperature=0.07)
    assert probability[0] == pytest.approx(0.5)
    assert probability[1] == pytest.approx(1 / (1 + math.exp(-1 / 0.07)))


def test_visual_association_is_half_the_smallest_cosine_distance() -> None:
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    embeddings = torch.tensor([[[2.0, 0.0], [-1.0, 0.0], [1.0, 1.0]]])
    scores = visual_association(embeddings, memory)[0]
    assert scores.tolist() == pytest.approx([0.0, 0.5, (1 - 1 / math.sqrt(2)) / 2])


def test_prompt_ensemble_is_state_major_with_the_class_name() -> None:
    normal, anomalous = compositional_prompts("bottle")
    assert normal[0] == "a cropped photo of the bottle."
    assert anomalous[21] == "a cropped photo of the bottle with flaw."
