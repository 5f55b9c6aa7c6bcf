"""Read a dataset in the MVTec AD folder layout and the anomaly groups of each class.

Layout: ``<root>/<class>/test/<defect type>/<stem>.png`` (``good`` = defect-free) and
``<root>/<class>/ground_truth/<defect type>/<stem>_mask.png``. Groups come from a YAML file
(``class -> group -> [defect types]``), from the MVTec AD groups shipped with normadd (paper
Table 1), or default to one group per defect type. The paper's protocol drops every
``combined`` defect type.

Problems that leave the rest usable (a missing mask, a group naming a defect type that does not
exist) become one-line notes; problems that make a class unusable raise
:class:`EvaluationDataError`, which the runner reports and then goes on with the next class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from normadd.errors import ImageLoadError, NormaddError
from normadd.evaluation.protocol import GOOD
from normadd.images import IMAGE_SUFFIXES
from normadd.masks import image_size_of, read_mask, resize_mask

DROPPED_TYPES = ("combined",)  # the paper's protocol drops every "combined" defect type
MVTEC_GROUPS_FILE = "mvtec_groups.yaml"


class EvaluationDataError(NormaddError, ValueError):
    """A dataset, class, group file or mask that the evaluation cannot use as it is."""


@dataclass(frozen=True)
class TestImage:
    """One test image of a class.

    Attributes:
        path: The image file.
        defect_type: Its ``test/`` sub-folder (``good`` for defect-free images).
        mask_path: Its ground-truth mask, or None (always None for ``good``).
    """

    path: Path
    defect_type: str
    mask_path: Path | None = None

    @property
    def is_good(self) -> bool:
        """True for a defect-free image."""
        return self.defect_type == GOOD


@dataclass(frozen=True)
class AnomalyGroup:
    """Defect types that are made normal together, named by the text that is added."""

    name: str
    defect_types: tuple[str, ...]

    @property
    def text(self) -> str:
        """The normality text added for this group: its name, underscores as spaces."""
        return self.name.replace("_", " ")


@dataclass
class ClassTestSet:
    """The usable test images of one class, and what was noticed while reading them.

    Attributes:
        name: The class folder name (used as the object name in prompts, as APRIL-GAN does).
        root: The class folder.
        images: Test images, sorted by defect type then file name.
        notes: One-line notes on what was dropped or is missing.
    """

    name: str
    root: Path
    images: list[TestImage]
    notes: list[str] = field(default_factory=list)

    @property
    def defect_types(self) -> list[str]:
        """The defect types present (``good`` excluded), sorted."""
        return sorted({image.defect_type for image in self.images if not image.is_good})


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_classes(root: Path) -> list[str]:
    """Class folders of ``root`` that have a ``test`` folder, sorted.

    Raises:
        EvaluationDataError: ``root`` does not exist or holds no class folder.
    """
    if not root.is_dir():
        raise EvaluationDataError(f"dataset folder {root} does not exist: fix --data")
    classes = sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
    if not classes:
        raise EvaluationDataError(
            f"no class folder with a test/ folder in {root}: --data must point at an MVTec AD style "
            "folder (<class>/test/<defect type>/, <class>/ground_truth/<defect type>/)"
        )
    return classes


def read_class(root: Path, class_name: str) -> ClassTestSet:
    """Read the test images (and locate their masks) of one class.

    Raises:
        EvaluationDataError: No such class folder, no ``test`` folder, or no defect type at all.
    """
    class_root = root / class_name
    test_root = class_root / "test"
    if not class_root.is_dir():
        known = ", ".join(list_classes(root)) if root.is_dir() else "none"
        raise EvaluationDataError(f"class '{class_name}' has no folder in {root} (classes found: {known})")
    if not test_root.is_dir():
        raise EvaluationDataError(f"class '{class_name}': {test_root} does not exist (MVTec layout needs test/)")
    notes: list[str] = []
    images: list[TestImage] = []
    missing_masks: list[Path] = []
    for folder in sorted(p for p in test_root.iterdir() if p.is_dir()):
        defect_type = folder.name
        if defect_type in DROPPED_TYPES:
            notes.append(f"{class_name}: dropped defect type '{defect_type}' (the paper's protocol)")
            continue
        files = _image_files(folder)
        if not files:
            notes.append(f"{class_name}: {folder} holds no images: skipped")
            continue
        for path in files:
            mask_path = None
            if defect_type != GOOD:
                mask_path = class_root / "ground_truth" / defect_type / f"{path.stem}_mask.png"
                if not mask_path.is_file():
                    missing_masks.append(mask_path)
                    mask_path = None
            images.append(TestImage(path, defect_type, mask_path))
    if missing_masks:
        notes.append(
            f"{class_name}: {len(missing_masks)} mask(s) missing (first: {missing_masks[0]}): those images are "
            "left out of the pixel metrics"
        )
    test_set = ClassTestSet(class_name, class_root, images, notes)
    if not test_set.defect_types:
        raise EvaluationDataError(
            f"class '{class_name}' has no defect images under {test_root} (only good ones): nothing to evaluate"
        )
    if not any(image.is_good for image in images):
        notes.append(f"{class_name}: no test/good images: selectivity cannot be measured")
    return test_set


def load_mask(mask_path: Path, image_path: Path, size: int, resize: str = "squash") -> np.ndarray:
    """A defect mask as a boolean (size, size) array, resized as its image is (bilinear, then > 0.5).

    EXIF orientation is applied to mask and image alike; ``resize`` is the line's ``squash`` or
    ``letterbox``.

    Raises:
        EvaluationDataError: The mask is unreadable or not of its image's size.
    """
    try:
        image_size = image_size_of(image_path)
        mask = read_mask(mask_path)
    except ImageLoadError as error:
        raise EvaluationDataError(f"mask {mask_path} cannot be read ({error})") from None
    if (mask.shape[1], mask.shape[0]) != image_size:
        raise EvaluationDataError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{image_size[0]}x{image_size[1]}: fix or remove the mask"
        )
    return resize_mask(mask, size, resize).numpy() > 0.5


OBJECT_NAMES_KEY = "object_names"  # groups YAML: {object_names: {class folder: object word}}


def _parse_groups(data: object, source: str) -> dict[str, list[AnomalyGroup]]:
    if not isinstance(data, dict):
        raise EvaluationDataError(f"{source}: groups must be a mapping 'class: {{group: [defect types]}}'")
    parsed: dict[str, list[AnomalyGroup]] = {}
    for class_name, groups in data.items():
        if class_name == OBJECT_NAMES_KEY:
            continue
        if not isinstance(groups, dict) or not all(
            isinstance(types, list) and types and all(isinstance(t, str) for t in types) for types in groups.values()
        ):
            raise EvaluationDataError(
                f"{source}: class '{class_name}' must map group names to lists of defect types, "
                "e.g. broken: [broken_small, broken_large]"
            )
        parsed[str(class_name)] = [AnomalyGroup(str(name), tuple(types)) for name, types in groups.items()]
    return parsed


def mvtec_groups() -> dict[str, list[AnomalyGroup]]:
    """The MVTec AD anomaly groups of the paper (Table 1), shipped with normadd."""
    text = resources.files("normadd.evaluation").joinpath("data", MVTEC_GROUPS_FILE).read_text()
    return _parse_groups(yaml.safe_load(text), MVTEC_GROUPS_FILE)


def read_groups_file(path: Path) -> dict[str, list[AnomalyGroup]]:
    """Groups from a YAML file in the layout of the shipped MVTec AD groups.

    Raises:
        EvaluationDataError: Missing file, bad YAML or a bad layout.
    """
    if not path.is_file():
        raise EvaluationDataError(f"groups file {path} does not exist: fix --groups")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise EvaluationDataError(f"groups file {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    return _parse_groups(data, str(path))


def read_object_names(path: Path | None) -> dict[str, str]:
    """The ``object_names`` map of a groups YAML file (class folder -> object word in the prompts), or {}.

    Raises:
        EvaluationDataError: Not a mapping of class names to non-empty texts.
    """
    if path is None:
        return {}
    if not path.is_file():
        raise EvaluationDataError(f"groups file {path} does not exist: fix --groups")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise EvaluationDataError(f"groups file {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    names = data.get(OBJECT_NAMES_KEY) if isinstance(data, dict) else None
    if names is None:
        return {}
    if not isinstance(names, dict) or not all(isinstance(v, str) and v.strip() for v in names.values()):
        raise EvaluationDataError(
            f"{path}: {OBJECT_NAMES_KEY} must map class folders to object words, e.g. mtd: magnetic tile"
        )
    return {str(k): v for k, v in names.items()}


def groups_for_class(
    test_set: ClassTestSet, configured: dict[str, list[AnomalyGroup]] | None
) -> tuple[list[AnomalyGroup], list[str]]:
    """The groups to evaluate for a class, checked against its defect types, plus notes.

    A group naming a defect type the class does not have is skipped with a note listing the
    valid types; a class the configuration does not know gets one group per defect type.
    """
    valid = test_set.defect_types
    if configured is None or test_set.name not in configured:
        return [AnomalyGroup(t, (t,)) for t in valid], [f"{test_set.name}: one group per defect type ({len(valid)})"]
    groups: list[AnomalyGroup] = []
    notes: list[str] = []
    for group in configured[test_set.name]:
        unknown = [t for t in group.defect_types if t not in valid and t not in DROPPED_TYPES]
        if unknown:
            notes.append(
                f"{test_set.name}: group '{group.name}' names defect type(s) {', '.join(unknown)} that do not exist "
                f"(valid: {', '.join(valid)}): group skipped"
            )
            continue
        groups.append(group)
    grouped = {t for g in groups for t in g.defect_types}
    ungrouped = [t for t in valid if t not in grouped]
    if ungrouped and groups:
        notes.append(f"{test_set.name}: defect type(s) {', '.join(ungrouped)} are in no group: always anomalous")
    return groups, notes
