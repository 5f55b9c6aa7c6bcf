"""The anomalib adapter: output contracts, normalisation and checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from normadd.detectors.anomalib_adapter import AnomalibDetector
from normadd.errors import InvalidMapError, NormaddError, WeightsMismatchError


class Echo(nn.Module):
    """Returns the mean pixel as the map, so normalisation is visible; channel-first like anomalib."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, pixels: Tensor) -> dict[str, Tensor]:
        maps = pixels.mean(1, keepdim=True).abs() * self.scale
        return {"anomaly_map": maps, "pred_score": torch.full((pixels.shape[0],), 7.0)}


def test_bare_torch_models_get_imagenet_normalised_pixels_and_max_scores() -> None:
    detector = AnomalibDetector(Echo(), input_size=8)
    result = detector.detect(torch.zeros(2, 3, 8, 8))
    expected = abs(sum(-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)) / 3)
    assert result.maps.shape == (2, 8, 8)
    assert result.scores.tolist() == pytest.approx([expected, expected], rel=1e-5)


def test_native_scores_are_the_model_pred_score() -> None:
    result = AnomalibDetector(Echo(), input_size=8, image_score="native").detect(torch.rand(1, 3, 8, 8))
    assert result.scores.tolist() == [7.0]


def test_output_without_anomaly_map_is_one_line() -> None:
    class NoMap(nn.Module):
        def forward(self, pixels: Tensor) -> dict[str, Tensor]:
            return {"pred_score": pixels.mean((1, 2, 3))}

    with pytest.raises(InvalidMapError, match="returned no anomaly_map"):
        AnomalibDetector(NoMap()).detect(torch.rand(1, 3, 8, 8))


def test_exported_torch_model_loads(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"model": Echo()}, path)
    pytest.importorskip("anomalib")
    detector = AnomalibDetector.from_checkpoint(path, input_size=8)
    assert detector.detect(torch.rand(1, 3, 8, 8)).maps.shape == (1, 8, 8)


def test_bad_checkpoints_are_one_line(tmp_path: Path) -> None:
    pytest.importorskip("anomalib")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(WeightsMismatchError, match="cannot be read"):
        AnomalibDetector.from_checkpoint(junk)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"junk")
    with pytest.raises(NormaddError, match="name its anomalib model class"):
        AnomalibDetector.from_checkpoint(ckpt)
    with pytest.raises(NormaddError, match="has no model 'NoSuchModel'"):
        AnomalibDetector.from_checkpoint(ckpt, "NoSuchModel")
