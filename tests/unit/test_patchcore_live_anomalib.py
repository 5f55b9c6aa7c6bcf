"""PatchCore against anomalib's ``PatchcoreModel`` live, when anomalib is installed (it is optional).

anomalib without its ``clip`` extra installs beside open_clip 3.x; only its WinCLIP needs the old
open_clip, so WinCLIP is compared through committed fixtures instead.
"""

from __future__ import annotations

import pytest
import torch

from helpers.random_weights import redraw
from normadd.detectors.patchcore import IMAGENET_MEAN, IMAGENET_STD, PatchCoreDetector

patchcore_module = pytest.importorskip("anomalib.models.image.patchcore.torch_model")
TOLERANCE = 1e-4  # measured max abs diff ~1e-5 (float32 ours vs float64 anomalib)


@pytest.mark.filterwarnings("ignore:Argument embeddings is deprecated")
def test_patchcore_matches_anomalib_live_on_redrawn_resnet18() -> None:
    reference = patchcore_module.PatchcoreModel(
        layers=["layer2", "layer3"], backbone="resnet18", pre_trained=False, num_neighbors=9
    )
    backbone = reference.feature_extractor.feature_extractor
    weights = redraw(backbone.state_dict(), seed=5)
    backbone.load_state_dict(weights)
    ours = PatchCoreDetector("resnet18", input_size=96, image_score="native", search="torch")
    ours.features.load_state_dict(redraw(ours.features.state_dict(), seed=5))
    generator = torch.Generator().manual_seed(0)
    train, test = torch.rand(3, 3, 96, 96, generator=generator), torch.rand(2, 3, 96, 96, generator=generator)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    reference.double().train()  # float64: anomalib's float32 distances are off by ~1e-3 themselves
    reference(((train - mean) / std).double())
    reference.subsample_embedding(sampling_ratio=0.1)
    reference.memory_bank = reference.memory_bank.float().double()
    reference.eval()
    expected = reference(((test - mean) / std).double())
    ours.set_memory_bank(reference.memory_bank.float())
    result = ours.detect(test)
    assert float(expected.anomaly_map.amax() - expected.anomaly_map.amin()) > 0.5
    assert (result.maps - expected.anomaly_map[:, 0].float()).abs().max() < TOLERANCE
    assert (result.scores - expected.pred_score.float()).abs().max() < TOLERANCE
