"""PatchCore's parts on their own: the coreset, the blur, the reweighting and the memory-bank file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from normadd.detectors.patchcore import (
    PatchCoreDetector,
    gaussian_blur,
    greedy_coreset,
    johnson_lindenstrauss_dim,
    nearest_neighbours,
    reweighted_image_scores,
)
from normadd.errors import MemoryBankMismatchError
from normadd.runtime import Runtime


def test_coreset_is_seeded_and_deterministic() -> None:
    points = torch.randn(500, 64, generator=torch.Generator().manual_seed(0))
    first = greedy_coreset(points, 0.1, seed=3)
    assert first.shape == (50,) and len(set(first.tolist())) == 50
    assert torch.equal(first, greedy_coreset(points, 0.1, seed=3))
    assert not torch.equal(first, greedy_coreset(points, 0.1, seed=4))


def test_coreset_picks_the_farthest_points_of_a_hand_made_cloud() -> None:
    # A tight cluster of 16 points near the origin plus four far corners: a 5-point coreset must
    # take the four corners (each the farthest from everything taken) and one cluster point.
    cluster = 0.01 * torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    corners = torch.tensor([[10.0, 10.0], [-10.0, 10.0], [10.0, -10.0], [-10.0, -10.0]])
    points = torch.cat([cluster, corners])
    chosen = set(greedy_coreset(points, 5 / 20, seed=0).tolist())
    assert {16, 17, 18, 19} <= chosen
    assert len(chosen - {16, 17, 18, 19}) == 1


def test_coreset_refuses_a_ratio_that_keeps_nothing() -> None:
    with pytest.raises(ValueError, match="keeps none"):
        greedy_coreset(torch.randn(5, 3), 0.1)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        greedy_coreset(torch.randn(5, 3), 1.5)


def test_johnson_lindenstrauss_size_for_eps_0_9() -> None:
    assert johnson_lindenstrauss_dim(214_016, 0.9) == int(4 * torch.log(torch.tensor(214_016.0)).item() / 0.162)


def test_gaussian_blur_keeps_a_constant_map_and_the_mass_of_a_peak() -> None:
    constant = torch.full((1, 40, 40), 2.5)
    assert torch.allclose(gaussian_blur(constant), constant)
    peak = torch.zeros(1, 64, 64)
    peak[0, 32, 32] = 1.0
    blurred = gaussian_blur(peak)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5) and blurred.argmax() == 32 * 64 + 32


def test_nearest_neighbours_by_torch() -> None:
    bank = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    distances, indices = nearest_neighbours(torch.tensor([[3.0, 3.0], [0.0, 1.0]]), bank, 1)
    assert indices[:, 0].tolist() == [1, 0] and distances[:, 0].tolist() == pytest.approx([1.0, 1.0])


def test_faiss_and_torch_find_the_same_neighbours() -> None:
    pytest.importorskip("faiss")
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(300, 48, generator=generator), torch.randn(500, 48, generator=generator)
    faiss_distances, faiss_indices = nearest_neighbours(queries, bank, 3, backend="faiss")
    torch_distances, torch_indices = nearest_neighbours(queries, bank, 3, backend="torch")
    assert torch.equal(faiss_indices, torch_indices)
    assert torch.allclose(faiss_distances, torch_distances, atol=1e-4)


def test_reweighting_with_one_neighbour_is_the_largest_patch_distance() -> None:
    patch_scores = torch.tensor([[0.5, 2.0, 1.0]])
    scores = reweighted_image_scores(
        patch_scores, torch.zeros(1, 3, dtype=torch.long), torch.randn(1, 3, 4), torch.randn(5, 4), num_neighbors=1
    )
    assert scores.tolist() == [2.0]


def test_reweighting_follows_the_paper_formula_on_a_hand_example() -> None:
    # m* = 0.0, its 3 nearest memory features (itself first) are 0.0, 0.1, 0.2; the test patch is at 1.0.
    bank = torch.tensor([[0.0], [0.1], [0.2], [10.0]])
    score = reweighted_image_scores(torch.tensor([[1.0]]), torch.tensor([[0]]), torch.tensor([[[1.0]]]), bank, 3)
    distances = torch.tensor([1.0, 0.9, 0.8])
    assert score.item() == pytest.approx((1 - torch.softmax(distances, 0)[0]).item() * 1.0)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[PatchCoreDetector, Path]:
    detector = PatchCoreDetector("resnet18", input_size=64).fit([torch.rand(3, 3, 64, 64)])
    path = tmp_path_factory.mktemp("bank") / "bank.pt"
    detector.save(path)
    return detector, path


def test_memory_bank_round_trip_gives_the_same_maps(fitted: tuple[PatchCoreDetector, Path]) -> None:
    detector, path = fitted
    images = torch.rand(2, 3, 64, 64)
    loaded = PatchCoreDetector("resnet18", input_size=64).load(path)
    assert torch.equal(loaded.memory_bank, detector.memory_bank)
    assert torch.allclose(loaded.detect(images).maps, detector.detect(images).maps)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"input_size": 96}, "input_size 64 (now 96)"),
        ({"coreset_ratio": 0.2}, "coreset_ratio 0.1 (now 0.2)"),
        ({"layers": ("layer3",)}, "layers ('layer2', 'layer3') (now ('layer3',))"),
        ({"seed": 1}, "weights"),
    ],
)
def test_memory_bank_built_with_other_settings_is_refused_by_name(
    fitted: tuple[PatchCoreDetector, Path], settings: dict, named: str
) -> None:
    _, path = fitted
    other = PatchCoreDetector("resnet18", **{"input_size": 64, **settings})
    with pytest.raises(MemoryBankMismatchError) as error:
        other.load(path)
    assert named in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_file_that_is_no_memory_bank_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(MemoryBankMismatchError, match="cannot be read"):
        PatchCoreDetector("resnet18", input_size=64).load(junk)


def test_a_bf16_runtime_leaves_patchcore_in_fp32() -> None:
    """bf16 features move PatchCore's distances too much (bench_inspect --precision-only): it keeps fp32."""
    images = torch.rand(1, 3, 64, 64)
    fp32 = PatchCoreDetector("resnet18", input_size=64, runtime=Runtime(torch.device("cpu"), "fp32"))
    bf16 = PatchCoreDetector("resnet18", input_size=64, runtime=Runtime(torch.device("cpu"), "bf16"))
    assert bf16.runtime.precision == "bf16"
    features = bf16.embed(images)
    assert features.dtype == torch.float32
    assert torch.equal(features, fp32.embed(images))
