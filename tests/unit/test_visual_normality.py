"""Visual normality: example images (optionally masked) become one suppression channel among the text ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers.synthetic_mvtec import write_image, write_mask
from normadd.backbone import TINY_RANDOM, ClipEncoder
from normadd.detectors.aprilgan import AprilGanDetector
from normadd.errors import InvalidMaskError, NormaddError
from normadd.normality import AddedNormality, NormalityAddition, NormalityDetector
from normadd.normality.visual import selected_patches
from normadd.prompts.text_embedding import TextEmbedder


@pytest.fixture(scope="module")
def detector() -> AprilGanDetector:
    encoder = ClipEncoder.from_name(TINY_RANDOM)
    return AprilGanDetector(encoder, "bottle", text_embedder=TextEmbedder(encoder, disk_cache=False))


@pytest.fixture()
def addition(detector: AprilGanDetector) -> NormalityAddition:
    return NormalityAddition(detector)


def _images(count: int = 2, size: int = 80) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(3))


def _box_mask(size: int = 80) -> torch.Tensor:
    mask = torch.zeros(size, size)
    mask[16:48, 24:56] = 1
    return mask


def test_a_patch_joins_the_memory_when_the_mask_covers_more_than_half_of_it() -> None:
    coverage = torch.tensor([[0.0, 0.4], [0.6, 1.0]])
    assert selected_patches(coverage).tolist() == [False, False, True, True]


def test_a_defect_smaller_than_half_a_patch_still_gives_its_best_covered_patch() -> None:
    coverage = torch.tensor([[0.0, 0.1], [0.3, 0.0]])
    assert selected_patches(coverage).tolist() == [False, False, True, False]


def test_the_memory_holds_only_the_patches_inside_the_mask(addition: NormalityAddition) -> None:
    masked = addition.add_example(_images(1), [_box_mask()])
    whole = addition.add_example(_images(1), name="whole")
    assert masked.kind == "visual" and masked.name == "example" and masked.embedding is None
    assert masked.memory is not None and whole.memory is not None
    # The 32 x 32 box covers 4 x 4 of the 10 x 10 patches of 8 px; without a mask all 100 join.
    assert masked.memory.size == 16 and whole.memory.size == 100
    assert len(masked.memory.features) == 4
    assert all(torch.allclose(f.norm(dim=-1), torch.ones(f.shape[0])) for f in masked.memory.features)


def test_text_and_visual_channels_come_back_in_the_order_they_were_added(
    detector: AprilGanDetector, addition: NormalityAddition
) -> None:
    images = _images(2)
    addition.add("broken")
    addition.add_example(images[:1], [_box_mask()], strength=0.5)
    addition.add("contamination")
    mixed = addition.explain(images)
    assert mixed.names == ["broken", "example", "contamination"]
    assert mixed.suppression.shape == (2, 3, 256, 256)
    text_only = NormalityAddition(detector, ["broken", "contamination"]).explain(images)
    assert torch.allclose(mixed.suppression[:, 0], text_only.suppression[:, 0], atol=1e-6)
    assert torch.allclose(mixed.suppression[:, 2], text_only.suppression[:, 1], atol=1e-6)
    visual_only = NormalityAddition(detector)
    visual_only.add_example(images[:1], [_box_mask()], strength=0.5)
    assert torch.allclose(mixed.suppression[:, 1], visual_only.explain(images).suppression[:, 0], atol=1e-6)
    # The same product formula: keep = (1 - A_broken)(1 - 0.5 A_example)(1 - A_contamination).
    expected = (1 - mixed.suppression[:, 0]) * (1 - 0.5 * mixed.suppression[:, 1]) * (1 - mixed.suppression[:, 2])
    assert torch.allclose(mixed.keep, expected, atol=1e-6)
    assert bool((mixed.suppression >= 0).all() and (mixed.suppression <= 1).all())


def test_removing_the_example_restores_the_detector_scores(addition: NormalityAddition) -> None:
    images = _images(1)
    plain = addition.explain(images)
    addition.add_example(images)  # the whole image is now normal: its own map is suppressed everywhere
    assert float(addition.explain(images).after_scores[0]) < 0.01 * float(plain.after_scores[0])
    addition.remove("example")
    assert float(addition.explain(images).after_scores[0]) == pytest.approx(float(plain.after_scores[0]))


def test_suppression_from_projected_tokens_alone_cannot_serve_a_visual_normality(
    addition: NormalityAddition,
) -> None:
    normality = addition.add_example(_images(1))
    features = addition.normality_detector.encoder.encode_images(_images(1))
    projected = addition.normality_detector.project(features)
    with pytest.raises(NormaddError, match="raw patch tokens"):
        addition.normality_detector.suppression_from_projected(projected, features.grid_size, [normality])
    maps = addition.normality_detector.suppression_from_projected(
        projected, features.grid_size, [normality], patch_tokens=features.patch_tokens
    )
    assert maps.shape == (1, 1, 256, 256)


def test_text_normalities_still_work_through_the_old_signatures(detector: AprilGanDetector) -> None:
    normality_detector = NormalityDetector(detector.encoder, "bottle", text_embedder=detector.text_embedder)
    normality = normality_detector.make_normality("broken")
    assert isinstance(normality, AddedNormality) and normality.kind == "text" and normality.memory is None
    features = detector.encoder.encode_images(_images(1))
    projected = normality_detector.project(features)
    maps = normality_detector.suppression_from_projected(projected, features.grid_size, [normality])
    assert maps.shape == (1, 1, 256, 256)


def test_a_mask_of_another_size_than_its_image_is_refused(addition: NormalityAddition, tmp_path: Path) -> None:
    image = write_image(tmp_path / "scuff.png", seed=1, size=64)
    mask = write_mask(tmp_path / "scuff_mask.png", 48, (4, 4, 20, 20))
    with pytest.raises(InvalidMaskError, match=r"is 48x48 but its image .*scuff\.png is 64x64"):
        addition.add_example([image], [mask])
    with pytest.raises(InvalidMaskError, match="is 40x40 but example image 0 is 80x80"):
        addition.add_example(_images(1), [torch.ones(40, 40)])


def test_an_empty_mask_is_refused(addition: NormalityAddition, tmp_path: Path) -> None:
    image = write_image(tmp_path / "scuff.png", seed=1, size=64)
    mask = write_mask(tmp_path / "scuff_mask.png", 64, None)
    with pytest.raises(InvalidMaskError, match="is empty"):
        addition.add_example([image], [mask])


def test_masks_pair_with_images_one_to_one(addition: NormalityAddition) -> None:
    with pytest.raises(NormaddError, match="1 masks for 2 example images"):
        addition.add_example(_images(2), [_box_mask()])
    with pytest.raises(ValueError, match="strength"):
        addition.add_example(_images(1), strength=1.5)


def test_files_name_the_example_after_the_first_image(addition: NormalityAddition, tmp_path: Path) -> None:
    first = write_image(tmp_path / "scuff_01.png", seed=1, size=64, defect_box=(8, 8, 24, 24))
    second = write_image(tmp_path / "scuff_02.png", seed=2, size=64, defect_box=(30, 30, 50, 50))
    masks = [write_mask(tmp_path / "m1.png", 64, (8, 8, 24, 24)), None]
    normality = addition.add_example([first, second], masks)
    assert normality.name == "example:scuff_01+1"
    assert normality.text == "examples scuff_01.png, scuff_02.png"
