"""NormalityAddition on APRIL-GAN (one shared CLIP pass) and on any other detector."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from normadd.backbone import ClipEncoder, ClipFeatures
from normadd.detectors import (
    AprilGanDetector,
    DetectionResult,
    Detector,
    layer_map_reference,
    max_scores,
)
from normadd.errors import InvalidMapError, NormaddError
from normadd.normality import (
    SUPPRESSION_SIZE,
    AddedNormality,
    NormalityAddition,
    NormalityDetector,
    parse_normality,
)
from normadd.normality.suppression import resize_maps
from normadd.prompts import TextEmbedder

pytestmark = pytest.mark.usefixtures("one_thread")

FEW_TEMPLATES = ("a photo of a {}.", "a close-up photo of the {}.", "there is a {} in the scene.")


@pytest.fixture(scope="module")
def detector(tiny_encoder: ClipEncoder) -> AprilGanDetector:
    """APRIL-GAN on the tiny backbone; three templates instead of 35 keep the text side fast."""
    return AprilGanDetector(tiny_encoder, "bottle", text_embedder=TextEmbedder(tiny_encoder, FEW_TEMPLATES))


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def count_encode_images(monkeypatch: pytest.MonkeyPatch, tiny_encoder: ClipEncoder) -> Callable[[], int]:
    """Wrap the shared encoder's ``encode_images`` with a counting spy; returns the count reader."""
    calls = 0
    original = tiny_encoder.encode_images

    def spy(pixels: Tensor) -> ClipFeatures:
        nonlocal calls
        calls += 1
        return original(pixels)

    monkeypatch.setattr(tiny_encoder, "encode_images", spy)
    return lambda: calls


class FixedMapDetector:
    """A detector that reads no CLIP features: it returns the maps it was given."""

    def __init__(self, maps: Tensor, input_size: int = 64) -> None:
        self.maps = maps
        self._input_size = input_size
        self.calls = 0

    @property
    def input_size(self) -> int:
        return self._input_size

    @property
    def description(self) -> str:
        return "fixed maps"

    def detect(self, images: Tensor) -> DetectionResult:
        self.calls += 1
        maps = self.maps[: images.shape[0]]
        return DetectionResult(maps=maps, scores=max_scores(maps))


def gradient_maps(batch: int = 2, size: int = 64) -> Tensor:
    """Maps rising from 0 to 2 left to right."""
    return torch.linspace(0, 2, size).expand(batch, size, size).clone()


# --- sharing one CLIP pass ----------------------------------------------------


def test_aprilgan_and_its_normality_detector_share_one_clip_pass(
    detector: AprilGanDetector,
) -> None:
    addition = NormalityAddition(detector, ["scratch"])
    assert addition.shares_clip_pass
    assert addition.normality_detector.encoder is detector.encoder
    assert addition.normality_detector.projections is detector.projections
    assert addition.normality_detector.class_name == "bottle"


@pytest.mark.parametrize("normalities", [[], ["scratch"], ["scratch", "broken:0.5", "contamination"]])
def test_the_image_tower_runs_once_per_explain(
    detector: AprilGanDetector,
    images: Tensor,
    count_encode_images: Callable[[], int],
    normalities: list[str],
) -> None:
    addition = NormalityAddition(detector, normalities)
    addition.explain(images)
    assert count_encode_images() == 1
    addition.detect(images)
    assert count_encode_images() == 2


# --- before and after ---------------------------------------------------------


def test_before_is_the_detectors_own_map_at_the_suppression_size(detector: AprilGanDetector, images: Tensor) -> None:
    result = NormalityAddition(detector, ["scratch"]).explain(images)
    own = detector.detect(images)
    assert own.maps.shape == (2, 80, 80)
    assert result.before.shape == (2, SUPPRESSION_SIZE, SUPPRESSION_SIZE)
    assert torch.allclose(result.before, resize_maps(own.maps, SUPPRESSION_SIZE), atol=1e-5)
    assert torch.allclose(result.detector_scores, own.scores, atol=1e-5)
    assert torch.allclose(result.before_scores, result.before.flatten(1).amax(dim=1))


def test_after_never_exceeds_before(detector: AprilGanDetector, images: Tensor) -> None:
    result = NormalityAddition(detector, ["scratch", "broken", "contamination:0.3"]).explain(images)
    assert (result.after <= result.before).all()
    assert (result.after >= 0).all()
    assert (result.after_scores <= result.before_scores + 1e-6).all()
    assert (result.after < result.before).any()  # something was suppressed


def test_after_is_before_times_the_keep_factor(detector: AprilGanDetector, images: Tensor) -> None:
    result = NormalityAddition(detector, ["scratch", "broken:0.5"]).explain(images)
    keep = (1 - 1.0 * result.suppression[:, 0]) * (1 - 0.5 * result.suppression[:, 1])
    assert torch.allclose(result.keep, keep, atol=1e-6)
    assert torch.allclose(result.after, result.before * keep, atol=1e-6)


def test_strength_zero_normality_changes_nothing(detector: AprilGanDetector, images: Tensor) -> None:
    result = NormalityAddition(detector, ["scratch:0"]).explain(images)
    assert result.suppression.shape[1] == 1
    assert torch.equal(result.keep, torch.ones_like(result.keep))
    assert torch.equal(result.after, result.before)


def test_no_normality_changes_nothing(detector: AprilGanDetector, images: Tensor) -> None:
    result = NormalityAddition(detector).explain(images)
    assert result.suppression.shape == (2, 0, SUPPRESSION_SIZE, SUPPRESSION_SIZE)
    assert result.names == []
    assert torch.equal(result.after, result.before)


def test_suppression_maps_are_one_channel_per_normality_in_zero_one(detector: AprilGanDetector, images: Tensor) -> None:
    result = NormalityAddition(detector, ["scratch", "broken:0.5", "contamination"]).explain(images)
    assert result.suppression.shape == (2, 3, SUPPRESSION_SIZE, SUPPRESSION_SIZE)
    assert (result.suppression >= 0).all() and (result.suppression <= 1).all()
    assert (result.keep >= 0).all() and (result.keep <= 1).all()
    assert result.names == ["scratch", "broken", "contamination"]


def test_a_suppression_map_is_the_layer_mean_of_aprilgan_maps_with_f_add(
    detector: AprilGanDetector, images: Tensor
) -> None:
    addition = NormalityAddition(detector, ["scratch"])
    result = addition.explain(images)
    features = detector.encoder.encode_images(detector.encoder.preprocess(images))
    projected = detector.projections(features.patch_tokens)
    f_add = addition.normalities["scratch"].embedding
    assert f_add is not None
    reference = sum(
        layer_map_reference(t, detector.normal_embedding, f_add, features.grid_size, SUPPRESSION_SIZE)
        for t in projected
    )
    assert isinstance(reference, Tensor)
    assert (result.suppression[:, 0] - reference / len(projected)).abs().max() < 1e-5


def test_the_aprilgan_map_is_the_layer_sum_of_reference_maps_with_f_abnormal(
    detector: AprilGanDetector, images: Tensor
) -> None:
    features = detector.encoder.encode_images(detector.encoder.preprocess(images))
    projected = detector.projections(features.patch_tokens)
    reference = sum(
        layer_map_reference(t, detector.normal_embedding, detector.abnormal_embedding, features.grid_size, 80)
        for t in projected
    )
    assert isinstance(reference, Tensor)
    maps = detector.detect_features(features).maps
    assert (maps - reference).abs().max() < 4e-5
    assert (maps >= 0).all() and (maps <= len(projected)).all()


def test_detect_returns_the_after_maps(detector: AprilGanDetector, images: Tensor) -> None:
    addition = NormalityAddition(detector, ["scratch", "broken"])
    result = addition.explain(images)
    detected = addition.detect(images)
    assert torch.equal(detected.maps, result.after)
    assert torch.equal(detected.scores, result.after_scores)
    assert torch.equal(detected.scores, result.after.flatten(1).amax(dim=1))
    assert isinstance(addition, Detector)
    assert addition.input_size == detector.input_size


# --- adding and removing ------------------------------------------------------


def test_add_returns_the_normality_with_phrases_and_f_add(detector: AprilGanDetector) -> None:
    addition = NormalityAddition(detector)
    added = addition.add("poke", strength=0.5)
    assert isinstance(added, AddedNormality)
    assert (added.name, added.text, added.strength) == ("poke", "poke", 0.5)
    assert "poked bottle" in added.phrases
    assert added.embedding is not None and added.embedding.shape == (detector.encoder.embed_dim,)
    assert "poke:0.5" in addition.description


def test_adding_a_name_twice_raises(detector: AprilGanDetector) -> None:
    addition = NormalityAddition(detector, ["scratch"])
    with pytest.raises(NormaddError, match="already added"):
        addition.add("scratch", 0.5)
    addition.add("scratch", 0.5, name="light scratch")
    assert list(addition.normalities) == ["scratch", "light scratch"]


def test_the_same_text_twice_in_the_constructor_raises(detector: AprilGanDetector) -> None:
    with pytest.raises(NormaddError, match="already added"):
        NormalityAddition(detector, ["scratch", "scratch:0.5"])


def test_remove_by_name_undoes_the_addition(detector: AprilGanDetector, images: Tensor) -> None:
    addition = NormalityAddition(detector, ["scratch", "broken"])
    removed = addition.remove("scratch")
    assert removed.name == "scratch"
    assert list(addition.normalities) == ["broken"]
    assert addition.explain(images).names == ["broken"]
    addition.remove("broken")
    result = addition.explain(images)
    assert torch.equal(result.after, result.before)


def test_removing_an_unknown_name_raises_and_lists_the_known_ones(
    detector: AprilGanDetector,
) -> None:
    addition = NormalityAddition(detector, ["scratch", "broken"])
    with pytest.raises(NormaddError, match="no normality named 'crack'") as caught:
        addition.remove("crack")
    assert "scratch" in str(caught.value) and "broken" in str(caught.value)
    with pytest.raises(NormaddError, match="none"):
        NormalityAddition(detector).remove("crack")


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_add_with_strength_outside_zero_one_raises(detector: AprilGanDetector, strength: float) -> None:
    with pytest.raises(ValueError, match="strength"):
        NormalityAddition(detector).add("scratch", strength)


# --- parse_normality ----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("contamination:0.5", ("contamination", 0.5)),
        ("scratch", ("scratch", 1.0)),
        ("scratch:0", ("scratch", 0.0)),
        ("scratch:1", ("scratch", 1.0)),
        ("small scratch:0.25", ("small scratch", 0.25)),
        ("type: a", ("type: a", 1.0)),  # a colon that is part of the text
    ],
)
def test_parse_normality(spec: str, expected: tuple[str, float]) -> None:
    assert parse_normality(spec) == expected


@pytest.mark.parametrize("spec", ["scratch:1.5", "scratch:-0.1", "scratch:nan", "scratch:inf"])
def test_parse_normality_refuses_strengths_outside_zero_one(spec: str) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        parse_normality(spec)


def test_a_ready_normality_with_strength_outside_zero_one_is_refused(
    detector: AprilGanDetector, images: Tensor
) -> None:
    made = NormalityAddition(detector).add("scratch")
    too_strong = AddedNormality("scratch", "scratch", 1.5, made.phrases, made.embedding)
    with pytest.raises(ValueError, match="strength"):
        result = NormalityAddition(detector, [too_strong]).explain(images)
        assert (result.after >= 0).all()  # what goes wrong when it is not refused


def test_a_strength_outside_zero_one_in_the_constructor_raises(detector: AprilGanDetector) -> None:
    with pytest.raises(ValueError):
        NormalityAddition(detector, ["contamination:2"])


# --- a detector that reads no CLIP features -----------------------------------


def test_a_non_clip_detector_needs_a_normality_detector() -> None:
    with pytest.raises(NormaddError, match="normality_detector"):
        NormalityAddition(FixedMapDetector(gradient_maps()), ["scratch"])


def test_a_non_clip_detector_works_with_a_normality_detector(
    detector: AprilGanDetector, images: Tensor, count_encode_images: Callable[[], int]
) -> None:
    fake = FixedMapDetector(gradient_maps(size=64))
    normality_detector = NormalityDetector(detector.encoder, "bottle", text_embedder=detector.text_embedder)
    addition = NormalityAddition(fake, ["scratch", "broken:0.5"], normality_detector=normality_detector)
    assert not addition.shares_clip_pass
    result = addition.explain(images)
    assert fake.calls == 1
    assert count_encode_images() == 1
    assert result.before.shape == (2, SUPPRESSION_SIZE, SUPPRESSION_SIZE)  # 64 px resized to 256
    assert torch.allclose(result.before, resize_maps(gradient_maps(size=64), SUPPRESSION_SIZE))
    assert torch.equal(result.before_scores, torch.full((2,), 2.0))
    assert result.suppression.shape == (2, 2, SUPPRESSION_SIZE, SUPPRESSION_SIZE)
    assert (result.after <= result.before).all()
    assert addition.input_size == 64


def test_without_normalities_a_non_clip_detector_skips_the_clip_pass(
    detector: AprilGanDetector, images: Tensor, count_encode_images: Callable[[], int]
) -> None:
    normality_detector = NormalityDetector(detector.encoder, "bottle", text_embedder=detector.text_embedder)
    addition = NormalityAddition(FixedMapDetector(gradient_maps()), normality_detector=normality_detector)
    result = addition.explain(images)
    assert count_encode_images() == 0
    assert torch.equal(result.after, result.before)


def test_maps_at_the_suppression_size_are_kept_as_they_are(detector: AprilGanDetector, images: Tensor) -> None:
    maps = gradient_maps(size=SUPPRESSION_SIZE)
    normality_detector = NormalityDetector(detector.encoder, "bottle", text_embedder=detector.text_embedder)
    result = NormalityAddition(FixedMapDetector(maps), ["scratch:0"], normality_detector=normality_detector).explain(
        images
    )
    assert torch.equal(result.before, maps)
    assert torch.equal(result.after, maps)


@pytest.mark.parametrize("normalities", [[], ["scratch:0"]])
def test_scores_do_not_change_when_nothing_is_suppressed(
    detector: AprilGanDetector, images: Tensor, normalities: list[str]
) -> None:
    maps = torch.zeros(2, 518, 518)  # APRIL-GAN's run size on ViT-L; a sharp peak shows it best
    maps[:, 100, 100] = 1.0
    normality_detector = NormalityDetector(detector.encoder, "bottle", text_embedder=detector.text_embedder)
    addition = NormalityAddition(FixedMapDetector(maps, 518), normalities, normality_detector=normality_detector)
    result = addition.explain(images)
    assert torch.equal(result.after, result.before)  # the maps agree ...
    assert torch.allclose(result.after_scores, result.before_scores)  # ... the scores do not


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_an_invalid_map_from_the_detector_raises_invalid_map_error(
    detector: AprilGanDetector, images: Tensor, bad: float
) -> None:
    maps = gradient_maps()
    maps[1, 10, 10] = bad
    normality_detector = NormalityDetector(detector.encoder, "bottle", text_embedder=detector.text_embedder)
    addition = NormalityAddition(FixedMapDetector(maps), ["scratch"], normality_detector=normality_detector)
    with pytest.raises(InvalidMapError, match="detector's anomaly map"):
        addition.explain(images)
