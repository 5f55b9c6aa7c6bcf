"""APRIL-GAN's text-patch segmentation: the fast K-text form equals the literal formula of record.

Spec (shared/paper/aprilgan_spec.md): L2-normalise projected tokens; logits = 100 · tokens ·
[f_normal, f_other]; reshape to the grid; upsample the *logits* bilinearly, align_corners=True;
*then* softmax over the two classes; keep the second. Layers are summed (range 0..L).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from normadd.detectors import layer_map_reference, layer_maps, segment

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-5


def random_case(
    seed: int, batch: int = 2, grid: tuple[int, int] = (5, 5), dim: int = 16, k: int = 3
) -> tuple[Tensor, Tensor, Tensor]:
    """Unnormalised tokens (B, N, D) and unit text embeddings f_normal (D,) and others (K, D).

    The texts are drawn close to each other, as CLIP text embeddings are, so that the two-class
    probabilities spread over (0, 1) instead of saturating at 0 or 1.
    """
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, grid[0] * grid[1], dim, generator=generator)
    base = torch.randn(dim, generator=generator)
    normal = F.normalize(base + 0.1 * torch.randn(dim, generator=generator), dim=-1)
    others = F.normalize(base + 0.1 * torch.randn(k, dim, generator=generator), dim=-1)
    return tokens, normal, others


def softmax_before_upsample(tokens: Tensor, normal: Tensor, other: Tensor, grid: tuple[int, int], size: int) -> Tensor:
    """The common mistake: softmax on the patch grid, then upsample the probabilities."""
    logits = 100.0 * F.normalize(tokens, dim=-1) @ torch.stack([normal, other], dim=1)
    probabilities = torch.softmax(logits, dim=-1).permute(0, 2, 1).reshape(tokens.shape[0], 2, *grid)
    return F.interpolate(probabilities, size=(size, size), mode="bilinear", align_corners=True)[:, 1]


def upsample_without_align_corners(
    tokens: Tensor, normal: Tensor, other: Tensor, grid: tuple[int, int], size: int
) -> Tensor:
    """The other common mistake: align_corners=False."""
    logits = 100.0 * F.normalize(tokens, dim=-1) @ torch.stack([normal, other], dim=1)
    logits = logits.permute(0, 2, 1).reshape(tokens.shape[0], 2, *grid)
    logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    return torch.softmax(logits, dim=1)[:, 1]


def two_token_case(d0: float, d1: float) -> tuple[Tensor, Tensor, Tensor]:
    """A 1 x 2 grid whose logit differences 100 · t · (f_other − f_normal) are d0 and d1."""
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # already unit length
    normal = torch.zeros(2)
    other = torch.tensor([d0, d1]) / 100.0
    return tokens, normal, other


# --- fast form == formula of record -------------------------------------------


@pytest.mark.parametrize(("seed", "grid", "size"), [(0, (5, 5), 20), (1, (3, 4), 17), (2, (10, 10), 80)])
def test_fast_layer_maps_equal_the_literal_aprilgan_formula_per_text(
    seed: int, grid: tuple[int, int], size: int
) -> None:
    tokens, normal, others = random_case(seed, grid=grid)
    fast = layer_maps(tokens, normal, others, grid, size)
    assert fast.shape == (2, 3, size, size)
    for k in range(others.shape[0]):
        reference = layer_map_reference(tokens, normal, others[k], grid, size)
        assert reference.shape == (2, size, size)
        assert (fast[:, k] - reference).abs().max() <= TOLERANCE
    assert fast.std() > 0.05  # the comparison is not between saturated maps


def test_maps_are_probabilities() -> None:
    tokens, normal, others = random_case(3)
    maps = layer_maps(tokens, normal, others, (5, 5), 20)
    assert (maps >= 0).all() and (maps <= 1).all()


def test_a_token_equal_to_f_other_is_more_other_than_normal() -> None:
    normal = F.normalize(torch.tensor([1.0, 0.2, 0.1]), dim=-1)
    other = F.normalize(torch.tensor([0.3, 1.0, -0.2]), dim=-1)
    tokens = torch.stack([3.0 * other, 0.5 * normal]).unsqueeze(0)  # scale does not matter
    # a 1 x 2 grid upsampled to 2 x 2 with align_corners=True keeps each token at its own column
    reference = layer_map_reference(tokens, normal, other, (1, 2), 2)
    fast = layer_maps(tokens, normal, other.unsqueeze(0), (1, 2), 2)[:, 0]
    for maps in (reference, fast):
        assert (maps[0, :, 0] > 0.5).all()
        assert (maps[0, :, 1] < 0.5).all()


def test_a_token_as_close_to_both_texts_gets_one_half() -> None:
    tokens, normal, other = two_token_case(0.0, 0.0)
    maps = layer_map_reference(tokens, normal, other, (1, 2), 3)
    assert torch.allclose(maps, torch.full((1, 3, 3), 0.5))


def test_logits_are_upsampled_with_align_corners_by_hand() -> None:
    tokens, normal, other = two_token_case(4.0, 0.0)
    # align_corners=True samples the logit difference at x = 0, 1/3, 2/3, 1 of the 1 x 2 grid
    expected = torch.sigmoid(torch.tensor([4.0, 8.0 / 3.0, 4.0 / 3.0, 0.0])).expand(4, 4)
    assert (layer_map_reference(tokens, normal, other, (1, 2), 4)[0] - expected).abs().max() < 1e-5
    assert (layer_maps(tokens, normal, other.unsqueeze(0), (1, 2), 4)[0, 0] - expected).abs().max() < 1e-5


def test_softmax_comes_after_upsampling_by_hand() -> None:
    tokens, normal, other = two_token_case(4.0, 0.0)
    middle = layer_map_reference(tokens, normal, other, (1, 2), 3)[0, 0, 1]
    assert middle == pytest.approx(float(torch.sigmoid(torch.tensor(2.0))), abs=1e-5)  # 0.881
    wrong = (torch.sigmoid(torch.tensor(4.0)) + 0.5) / 2  # softmax first: mean of 0.982 and 0.5
    assert abs(float(middle) - float(wrong)) > 0.1


# --- the order of operations matters, and ours is the spec's ------------------


def test_softmax_before_upsampling_gives_a_different_map() -> None:
    tokens, normal, others = random_case(4, grid=(10, 10))
    spec = layer_map_reference(tokens, normal, others[0], (10, 10), 80)
    fast = layer_maps(tokens, normal, others, (10, 10), 80)[:, 0]
    mistaken = softmax_before_upsample(tokens, normal, others[0], (10, 10), 80)
    assert (spec - mistaken).abs().max() > 1e-2  # the spec reports ~2.7e-2 on ViT-L
    assert (fast - spec).abs().max() <= TOLERANCE  # and our fast form follows the spec


def test_align_corners_false_gives_a_different_map() -> None:
    tokens, normal, others = random_case(5, grid=(10, 10))
    spec = layer_map_reference(tokens, normal, others[0], (10, 10), 80)
    fast = layer_maps(tokens, normal, others, (10, 10), 80)[:, 0]
    mistaken = upsample_without_align_corners(tokens, normal, others[0], (10, 10), 80)
    assert (spec - mistaken).abs().max() > 1e-2
    assert (fast - spec).abs().max() <= TOLERANCE


def test_the_logit_scale_is_a_fixed_100() -> None:
    tokens, normal, other = two_token_case(1.0, -1.0)
    maps = layer_map_reference(tokens, normal, other, (1, 2), 2)
    assert maps[0, 0, 0] == pytest.approx(float(torch.sigmoid(torch.tensor(1.0))), abs=1e-6)
    assert maps[0, 0, 1] == pytest.approx(float(torch.sigmoid(torch.tensor(-1.0))), abs=1e-6)


# --- segment: several layers --------------------------------------------------


def layered_case(seed: int, layers: int = 4) -> tuple[list[Tensor], Tensor, Tensor]:
    tokens = [random_case(seed + 10 * i, grid=(6, 6))[0] for i in range(layers)]
    _, normal, others = random_case(seed, grid=(6, 6))
    return tokens, normal, others


def test_sum_over_layers_equals_the_sum_of_reference_maps_and_lies_in_zero_to_l() -> None:
    tokens, normal, others = layered_case(6)
    summed = segment(tokens, normal, others, (6, 6), 24, reduce="sum")
    assert summed.shape == (2, 3, 24, 24)
    assert (summed >= 0).all() and (summed <= len(tokens)).all()
    assert summed.max() > 1.0  # a sum, not a mean
    for k in range(others.shape[0]):
        reference = sum(layer_map_reference(t, normal, others[k], (6, 6), 24) for t in tokens)
        assert isinstance(reference, Tensor)
        assert (summed[:, k] - reference).abs().max() <= len(tokens) * TOLERANCE


def test_mean_over_layers_lies_in_zero_one_and_is_the_sum_over_l() -> None:
    tokens, normal, others = layered_case(7)
    mean = segment(tokens, normal, others, (6, 6), 24, reduce="mean")
    summed = segment(tokens, normal, others, (6, 6), 24, reduce="sum")
    assert (mean >= 0).all() and (mean <= 1).all()
    assert torch.allclose(mean, summed / len(tokens), atol=1e-6)


def test_all_layers_alike_sum_to_l_times_one_layer() -> None:
    tokens, normal, others = layered_case(8, layers=1)
    one = segment(tokens, normal, others, (6, 6), 12, reduce="sum")
    four = segment(tokens * 4, normal, others, (6, 6), 12, reduce="sum")
    assert torch.allclose(four, 4 * one, atol=1e-5)


def test_unknown_reduce_raises() -> None:
    tokens, normal, others = layered_case(9, layers=1)
    with pytest.raises(ValueError, match="reduce"):
        segment(tokens, normal, others, (6, 6), 12, reduce="max")


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("elements_per_image", [1, 2 * 3 * 24 * 24, 2**22])
def test_layers_upsampled_together_or_in_chunks_equal_one_layer_at_a_time(
    reduce: str, elements_per_image: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All layers in one interpolate, two at a time or one at a time: the maps of a layer-by-layer sum."""
    import normadd.detectors.segmentation as segmentation

    monkeypatch.setattr(segmentation, "FUSED_ELEMENTS_PER_IMAGE", elements_per_image)
    tokens, normal, others = layered_case(11)
    per_layer = sum(layer_maps(t, normal, others, (6, 6), 24) for t in tokens)
    assert isinstance(per_layer, Tensor)
    expected = per_layer / len(tokens) if reduce == "mean" else per_layer
    fused = segment(tokens, normal, others, (6, 6), 24, reduce=reduce)
    assert fused.shape == expected.shape
    assert (fused - expected).abs().max() <= 1e-6
