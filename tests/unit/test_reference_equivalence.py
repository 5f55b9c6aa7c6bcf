"""Our WinCLIP and PatchCore against anomalib 2.7 on the same random weights (committed fixtures).

The fixtures come from ``scripts/make_reference_fixtures.py`` run in a separate environment with
anomalib 2.7 and open-clip-torch 2.24 (anomalib's WinCLIP is wrong on open_clip 3.x).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.random_weights import checksum, redraw
from normadd.backbone.clip_encoder import ClipEncoder
from normadd.detectors.patchcore import PatchCoreDetector
from normadd.detectors.winclip import WinClipDetector, compositional_prompts

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
# Measured max abs differences (CPU, fp32): WinCLIP maps 4.8e-8 zero-shot and 6.7e-8 3-shot, scores
# 2.4e-8 (maps in [0, 1]); PatchCore maps 2.0e-5 (range 1.0..15.8) and reweighted scores 9.5e-6 against
# anomalib run in float64, with either nearest-neighbour backend.
WINCLIP_TOLERANCE = 1e-6
PATCHCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def winclip_reference() -> dict:
    return torch.load(FIXTURES / "winclip.pt", weights_only=True)


@pytest.fixture(scope="module")
def winclip_detector(winclip_reference: dict) -> WinClipDetector:
    encoder = ClipEncoder.from_name("tiny-random-winclip")
    encoder.model.visual.load_state_dict(winclip_reference["visual_state_dict"])
    return WinClipDetector(encoder, "bottle", text_embeddings=winclip_reference["text_embeddings"])


def test_compositional_prompts_are_anomalib_s() -> None:
    expected = json.loads((FIXTURES / "winclip_prompts.json").read_text())
    normal, anomalous = compositional_prompts("bottle")
    assert normal == expected["normal"] and anomalous == expected["anomalous"]
    assert (len(normal), len(anomalous)) == (7 * 21, 4 * 21)


def test_zero_shot_winclip_maps_match_anomalib(winclip_detector: WinClipDetector, winclip_reference: dict) -> None:
    winclip_detector.clear_reference()
    prediction = winclip_detector.predict(winclip_reference["images"])
    expected = winclip_reference["zero_shot_maps"]
    assert float(expected.amax() - expected.amin()) > 0.01  # the comparison is not on constant maps
    assert (prediction.maps - expected).abs().max() < WINCLIP_TOLERANCE
    assert (prediction.image_scores - winclip_reference["zero_shot_scores"]).abs().max() < WINCLIP_TOLERANCE


def test_few_shot_winclip_maps_match_anomalib(winclip_detector: WinClipDetector, winclip_reference: dict) -> None:
    winclip_detector.set_reference(winclip_reference["reference_images"])
    assert winclip_detector.shots == 3
    prediction = winclip_detector.predict(winclip_reference["images"])
    assert (prediction.maps - winclip_reference["few_shot_maps"]).abs().max() < WINCLIP_TOLERANCE
    assert (prediction.image_scores - winclip_reference["few_shot_scores"]).abs().max() < WINCLIP_TOLERANCE
    winclip_detector.clear_reference()


@pytest.mark.parametrize("search", ["torch", "faiss"])
def test_patchcore_maps_and_reweighted_scores_match_anomalib(search: str) -> None:
    if search == "faiss":
        pytest.importorskip("faiss")
    reference = torch.load(FIXTURES / "patchcore.pt", weights_only=True)
    detector = PatchCoreDetector(
        "wide_resnet50_2", input_size=reference["images"].shape[-1], image_score="native", search=search
    )
    weights = redraw(detector.features.state_dict(), reference["weights_seed"])
    assert checksum(weights) == pytest.approx(reference["weights_checksum"], rel=1e-9)
    detector.features.load_state_dict(weights)
    detector.set_memory_bank(reference["memory_bank"])
    result = detector.detect(reference["images"])
    assert float(reference["maps"].amax() - reference["maps"].amin()) > 10  # not a degenerate random backbone
    assert (result.maps - reference["maps"]).abs().max() < PATCHCORE_TOLERANCE
    assert (result.scores - reference["scores"]).abs().max() < PATCHCORE_TOLERANCE
