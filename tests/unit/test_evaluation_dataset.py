"""Reading the MVTec AD layout and the groups: what is dropped, and one clear line for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from normadd.evaluation.dataset import (
    AnomalyGroup,
    EvaluationDataError,
    groups_for_class,
    list_classes,
    load_mask,
    mvtec_groups,
    read_class,
    read_groups_file,
)


def _png(path: Path, size: int = 32, value: int = 128, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode == "L" else (value, value, value)).save(path)


def _make_class(root: Path, name: str = "widget", types: tuple[str, ...] = ("scratch", "dent")) -> Path:
    for stem in ("000", "001"):
        _png(root / name / "test" / "good" / f"{stem}.png")
        for defect in types:
            _png(root / name / "test" / defect / f"{stem}.png")
            _png(root / name / "ground_truth" / defect / f"{stem}_mask.png", mode="L", value=255)
    return root / name


def test_combined_is_dropped_and_good_has_no_mask(tmp_path: Path) -> None:
    _make_class(tmp_path, types=("scratch", "combined"))
    test_set = read_class(tmp_path, "widget")
    assert test_set.defect_types == ["scratch"]
    assert any("combined" in note for note in test_set.notes)
    assert all(image.mask_path is None for image in test_set.images if image.is_good)
    assert all(image.mask_path is not None for image in test_set.images if not image.is_good)


def test_missing_masks_are_noted_once_and_images_stay(tmp_path: Path) -> None:
    class_root = _make_class(tmp_path)
    (class_root / "ground_truth" / "dent" / "001_mask.png").unlink()
    test_set = read_class(tmp_path, "widget")
    assert len(test_set.images) == 6
    assert [n for n in test_set.notes if "mask(s) missing" in n] == [
        f"widget: 1 mask(s) missing (first: {class_root / 'ground_truth' / 'dent' / '001_mask.png'}): those images "
        "are left out of the pixel metrics"
    ]


def test_a_class_without_defects_is_one_clear_error(tmp_path: Path) -> None:
    _make_class(tmp_path, types=())
    with pytest.raises(EvaluationDataError, match="no defect images"):
        read_class(tmp_path, "widget")


def test_missing_folders_name_what_exists(tmp_path: Path) -> None:
    _make_class(tmp_path)
    with pytest.raises(EvaluationDataError, match=r"class 'gadget' has no folder .* \(classes found: widget\)"):
        read_class(tmp_path, "gadget")
    with pytest.raises(EvaluationDataError, match="does not exist: fix --data"):
        list_classes(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationDataError, match="MVTec AD style"):
        list_classes(tmp_path / "empty")


def test_a_group_naming_an_unknown_defect_type_is_skipped_with_the_valid_ones(tmp_path: Path) -> None:
    test_set = read_class(_make_class(tmp_path).parent, "widget")
    configured = {"widget": [AnomalyGroup("scratch", ("scratch",)), AnomalyGroup("bent", ("bent", "dent"))]}
    groups, notes = groups_for_class(test_set, configured)
    assert [g.name for g in groups] == ["scratch"]
    assert "group 'bent' names defect type(s) bent that do not exist (valid: dent, scratch): group skipped" in notes[0]
    assert "dent are in no group: always anomalous" in notes[1]


def test_classes_without_configured_groups_get_one_group_per_defect_type(tmp_path: Path) -> None:
    test_set = read_class(_make_class(tmp_path).parent, "widget")
    groups, _ = groups_for_class(test_set, mvtec_groups())
    assert groups == [AnomalyGroup("dent", ("dent",)), AnomalyGroup("scratch", ("scratch",))]


def test_the_mvtec_groups_ship_with_the_package() -> None:
    groups = {g.name: g for g in mvtec_groups()["bottle"]}
    assert groups["broken"].defect_types == ("broken_small", "broken_large")
    assert groups["contamination"].defect_types == ("contamination",)
    assert "toothbrush" not in mvtec_groups()
    assert AnomalyGroup("bent_wire", ("bent_wire",)).text == "bent wire"


def test_a_bad_groups_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EvaluationDataError, match="does not exist: fix --groups"):
        read_groups_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("widget:\n  scratch: scratch\n")
    with pytest.raises(EvaluationDataError, match="must map group names to lists of defect types"):
        read_groups_file(bad)


def test_masks_are_resized_bilinearly_and_thresholded_at_half(tmp_path: Path) -> None:
    image, mask = tmp_path / "a.png", tmp_path / "a_mask.png"
    _png(image, size=8)
    array = np.zeros((8, 8), dtype=np.uint8)
    array[:, :4] = 255
    Image.fromarray(array, mode="L").save(mask)
    loaded = load_mask(mask, image, 4)
    assert loaded.dtype == bool and loaded.shape == (4, 4)
    assert loaded[:, :2].all() and not loaded[:, 2:].any()


def test_a_mask_of_another_size_than_its_image_is_refused(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", size=32)
    _png(tmp_path / "a_mask.png", size=16, mode="L", value=255)
    with pytest.raises(EvaluationDataError, match="is 16x16 but its image is 32x32"):
        load_mask(tmp_path / "a_mask.png", tmp_path / "a.png", 8)
