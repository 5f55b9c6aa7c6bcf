"""PatchCore's coreset: the pruned exact greedy against anomalib's picks, the fast one against its bound."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from normadd.detectors.coreset import greedy_coreset, k_center_greedy

FAST_RADIUS_BOUND = 1.05  # the fast coreset's coverage radius, at most this times the exact one's


def _clustered(n: int, dims: int, seed: int) -> torch.Tensor:
    """Features with structure, like PatchCore's: 40 clusters of different spreads and sizes."""
    generator = torch.Generator().manual_seed(seed)
    centers = 6 * torch.randn(40, dims, generator=generator)
    members = torch.randint(40, (n,), generator=generator) ** 2 // 40  # unequal cluster sizes
    spread = 0.2 + torch.rand(40, 1, generator=generator) * 2
    return centers[members] + spread[members] * torch.randn(n, dims, generator=generator)


def _plain_greedy(features: torch.Tensor, size: int, start: int) -> torch.Tensor:
    """The textbook loop: one full distance update per pick."""
    squared_norms = (features * features).sum(dim=1)
    min_distances = torch.full((features.shape[0],), float("inf"))
    selected, index = [], start
    for _ in range(size):
        selected.append(index)
        distances = (squared_norms - 2 * (features @ features[index]) + squared_norms[index]).clamp_min_(0)
        min_distances = torch.minimum(min_distances, distances)
        min_distances[index] = 0.0
        index = int(torch.argmax(min_distances))
    return torch.tensor(selected)


def _radius(features: torch.Tensor, indices: torch.Tensor) -> float:
    return float(torch.cdist(features.double(), features[indices].double()).amin(dim=1).max())


@pytest.mark.parametrize(("n", "dims"), [(3000, 16), (2500, 48), (4000, 8)])
def test_pruned_greedy_picks_what_the_plain_loop_picks(n: int, dims: int) -> None:
    features = _clustered(n, dims, seed=n)
    expected = _plain_greedy(features, n // 10, start=5)
    assert torch.equal(k_center_greedy(features, n // 10, start=5), expected)


def test_pruned_greedy_on_features_without_structure() -> None:
    # Gaussian noise in 256 dimensions: nearly every pick reaches most rows (the full-update path).
    features = torch.randn(1500, 256, generator=torch.Generator().manual_seed(3))
    assert torch.equal(k_center_greedy(features, 150, start=0), _plain_greedy(features, 150, start=0))


def test_exact_coreset_equals_anomalib_k_center_greedy() -> None:
    sampling = pytest.importorskip("anomalib.models.components.sampling")
    # 40 dimensions are below the Johnson-Lindenstrauss size of 2,000 rows (187), so neither side projects;
    # anomalib skips its projection for 3-d input and draws its first row from torch's global generator.
    features = _clustered(2000, 40, seed=7)
    torch.manual_seed(11)
    expected = sampling.KCenterGreedy(features.unsqueeze(-1), 0.1).select_coreset_idxs()
    assert greedy_coreset(features, 0.1, seed=11).tolist() == expected


@pytest.mark.parametrize(("n", "dims", "seed"), [(4000, 1536, 0), (6000, 512, 1), (3000, 256, 2)])
def test_fast_coreset_radius_stays_within_its_bound(n: int, dims: int, seed: int) -> None:
    features = _clustered(n, dims, seed)
    exact = greedy_coreset(features, 0.1, seed=seed)
    fast = greedy_coreset(features, 0.1, seed=seed, method="fast")
    assert len(set(fast.tolist())) == len(fast) == n // 10
    assert _radius(features, fast) <= FAST_RADIUS_BOUND * _radius(features, exact)


def test_unknown_coreset_method_is_refused() -> None:
    with pytest.raises(ValueError, match="exact or fast"):
        greedy_coreset(torch.randn(100, 4), 0.1, method="quick")


def test_a_line_config_refuses_an_unknown_coreset_word() -> None:
    from normadd.config import LineConfig
    from normadd.errors import NormaddError

    assert LineConfig.from_dict({"class_name": "bottle", "coreset": "fast"}).coreset == "fast"
    with pytest.raises(NormaddError, match="coreset 'quick' is unknown: use exact or fast"):
        LineConfig.from_dict({"class_name": "bottle", "coreset": "quick"})


def test_the_cli_refuses_an_unknown_coreset_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from normadd.cli import app

    image = tmp_path / "a.png"
    image.write_bytes(b"not read: the settings are checked first")
    result = CliRunner().invoke(app, ["inspect", str(image), "--class-name", "bottle", "--coreset", "quick"])
    assert result.exit_code == 2
    assert "coreset 'quick' is unknown" in result.output and "Traceback" not in result.output
