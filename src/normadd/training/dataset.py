"""Images with defect masks in the MVTec AD layout, as training samples for the projections.

Layout (per class folder)::

    <class>/test/good/*.png                      normal images: an empty mask
    <class>/test/<defect>/<stem>.png             defect images ...
    <class>/ground_truth/<defect>/<stem>_mask.png   ... and their masks

APRIL-GAN trains on the split that carries masks (MVTec's ``test``), with good images as empty
masks. Everything is checked when the dataset is built, before any training step: a defect
image without its mask, a mask of another size, an empty mask, or no masks at all is one clear
error line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor
from torch.utils.data import Dataset

from normadd.errors import DatasetError, InvalidMaskError
from normadd.images import DEFAULT_RESIZE, IMAGE_SUFFIXES, check_resize_mode, load_image
from normadd.masks import check_mask_fits, read_mask, resize_mask
from normadd.prompts.templates import default_object_name

GOOD = "good"
MASK_SUFFIX = "_mask"
CACHE_LIMIT_BYTES = 1 << 30  # keep decoded images in memory when the whole set fits in 1 GiB


@dataclass(frozen=True)
class MaskedSample:
    """One training image.

    Attributes:
        image: The image file.
        mask: Its mask file, or None for a good image (all normal).
        class_name: The class folder name, used as the object name in the prompts.
        defect: The defect folder name ("good" for normal images).
    """

    image: Path
    mask: Path | None
    class_name: str
    defect: str


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _is_class_folder(path: Path) -> bool:
    return (path / "test").is_dir()


def _find_mask(ground_truth: Path, image: Path) -> Path | None:
    for name in (f"{image.stem}{MASK_SUFFIX}", image.stem):
        for suffix in IMAGE_SUFFIXES:
            candidate = ground_truth / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def class_samples(class_dir: Path, split: str = "test") -> list[MaskedSample]:
    """The samples of one class folder's split, each defect image paired with its mask.

    Raises:
        DatasetError: A defect image has no mask.
        InvalidMaskError: A mask's size differs from its image's.
    """
    samples: list[MaskedSample] = []
    split_dir = class_dir / split
    for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        for image in _images_in(defect_dir):
            if defect == GOOD:
                samples.append(MaskedSample(image, None, class_dir.name, defect))
                continue
            mask = _find_mask(class_dir / "ground_truth" / defect, image)
            if mask is None:
                raise DatasetError(
                    f"defect image {image} has no mask: put it at "
                    f"{class_dir / 'ground_truth' / defect / (image.stem + MASK_SUFFIX + '.png')}"
                )
            check_mask_fits(mask, image)
            samples.append(MaskedSample(image, mask, class_dir.name, defect))
    return samples


class MaskedImageDataset(Dataset[tuple[Tensor, Tensor, int]]):
    """Images and their masks at the CLIP run size.

    Each item is ``(image (3, S, S) in [0, 1], mask (S, S) of 0/1, class index)``.

    Args:
        samples: The images, masks and class names.
        image_size: The run size S both are resized to.
        check_masks: Read every mask once now and refuse empty ones of defect images.
        cache: Keep decoded images and masks in memory across epochs; when None, only if the
            whole set at the run size fits in 1 GiB.
        resize: ``squash`` (APRIL-GAN) or ``letterbox``; masks are resized the same way.
        object_names: Class -> the object word in the prompts; others get the class folder name
            with ``_`` as spaces.

    Raises:
        DatasetError: No samples, or no sample with a mask.
        InvalidMaskError: An empty defect mask (when ``check_masks``).
    """

    def __init__(
        self,
        samples: Sequence[MaskedSample],
        image_size: int,
        check_masks: bool = True,
        cache: bool | None = None,
        resize: str = DEFAULT_RESIZE,
        object_names: Mapping[str, str] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.resize = check_resize_mode(resize)
        self.object_names = dict(object_names or {})
        if cache is None:
            cache = len(self.samples) * 4 * image_size * image_size * 4 <= CACHE_LIMIT_BYTES
        self._cache: dict[int, tuple[Tensor, Tensor]] | None = {} if cache else None
        if not self.samples:
            raise DatasetError("the training dataset has no images")
        if all(sample.mask is None for sample in self.samples):
            raise DatasetError(
                "the training dataset has no masks (only good images): training needs defect images "
                "with masks in <class>/ground_truth/<defect>/<stem>_mask.png (MVTec AD layout)"
            )
        self.class_names = sorted({sample.class_name for sample in self.samples})
        if check_masks:
            for sample in self.samples:
                if sample.mask is not None and not bool(read_mask(sample.mask).any()):
                    raise InvalidMaskError(
                        f"mask {sample.mask} is empty (no defect pixel) but its image is in defect folder "
                        f"'{sample.defect}': fix the mask or move the image to {GOOD}/"
                    )

    @classmethod
    def from_mvtec(
        cls,
        root: str | Path,
        image_size: int,
        classes: Sequence[str] | None = None,
        split: str = "test",
        cache: bool | None = None,
        resize: str = DEFAULT_RESIZE,
        object_names: Mapping[str, str] | None = None,
    ) -> MaskedImageDataset:
        """Collect a dataset in the MVTec AD layout.

        Args:
            root: A dataset root holding class folders, or one class folder itself.
            image_size: The CLIP run size.
            classes: Class folder names to keep; all when None.
            split: The split with masks ("test" in MVTec AD).
            cache: Keep decoded images in memory (see the class).
            resize: ``squash`` or ``letterbox`` (see the class).
            object_names: Class -> object word in the prompts (see the class).

        Raises:
            DatasetError: Missing folder, unknown classes, no masks.
            InvalidMaskError: A mask of another size than its image, or an empty defect mask.
        """
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset folder {root} does not exist: pass --data DIR (MVTec AD layout)")
        if _is_class_folder(root):
            class_dirs = {root.name: root}
        else:
            class_dirs = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and _is_class_folder(p)}
        if not class_dirs:
            raise DatasetError(
                f"{root} is not in the MVTec AD layout: expected <class>/{split}/<defect>/*.png and "
                "<class>/ground_truth/<defect>/<stem>_mask.png"
            )
        if classes:
            unknown = sorted(set(classes) - set(class_dirs))
            if unknown:
                raise DatasetError(f"classes {unknown} are not in {root}: choose from {', '.join(class_dirs)}")
            class_dirs = {name: class_dirs[name] for name in classes}
        samples = [sample for folder in class_dirs.values() for sample in class_samples(folder, split)]
        if not samples:
            raise DatasetError(f"no images found under {root}/<class>/{split}/")
        return cls(samples, image_size, cache=cache, resize=resize, object_names=object_names)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def prompt_objects(self) -> list[str]:
        """The object word of each class in :attr:`class_names`, as the prompts say it."""
        return [self.object_names.get(name) or default_object_name(name) for name in self.class_names]

    def class_index(self, index: int) -> int:
        """Index into :attr:`class_names` of sample ``index``."""
        return self.class_names.index(self.samples[index].class_name)

    def load_mask(self, index: int) -> Tensor:
        """The mask of sample ``index`` at the run size (zeros for a good image)."""
        sample = self.samples[index]
        if sample.mask is None:
            return torch.zeros(self.image_size, self.image_size)
        return resize_mask(read_mask(sample.mask), self.image_size, self.resize)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        if self._cache is not None and index in self._cache:
            image, mask = self._cache[index]
        else:
            image, mask = load_image(self.samples[index].image, self.image_size, self.resize), self.load_mask(index)
            if self._cache is not None:
                self._cache[index] = (image, mask)
        return image, mask, self.class_index(index)

    def mosaic(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, int]:
        """Four samples of one class tiled 2 x 2 and resized to the run size, with their masks.

        APRIL-GAN's MVTec augmentation: it teaches the projections smaller defects and several
        defects in one image.
        """
        if len(indices) != 4:
            raise ValueError(f"a mosaic needs 4 samples, got {len(indices)}")
        items = [self[i] for i in indices]
        pictures = [image for image, _, _ in items]
        masks_alone = [mask for _, mask, _ in items]
        images = torch.cat([torch.cat(pictures[:2], dim=-1), torch.cat(pictures[2:], dim=-1)], dim=-2)
        masks = torch.cat([torch.cat(masks_alone[:2], dim=-1), torch.cat(masks_alone[2:], dim=-1)], dim=-2)
        size = (self.image_size, self.image_size)
        image = F.interpolate(images[None], size=size, mode="bicubic", antialias=True)[0].clamp(0, 1)
        return image, resize_mask(masks, self.image_size), items[0][2]
