"""Reference images of normal parts, as few-shot WinCLIP and PatchCore read them.

References are resized (PIL bicubic, squashed or letterboxed as the line says) to the detector's
input size exactly as the inspected images are, so both go through the same preprocessing and
references of different pixel sizes work just as test images of different sizes do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from normadd.errors import ImageLoadError, ReferenceImagesError
from normadd.images import DEFAULT_RESIZE, IMAGE_SUFFIXES, open_rgb, to_tensor


def find_reference_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    """Image files in ``folder`` (recursively, sorted), the first ``limit`` of them when given.

    Raises:
        ReferenceImagesError: The folder does not exist, holds no images, or fewer than ``limit``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReferenceImagesError(f"reference folder {folder} does not exist: pass --reference DIR of normal images")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ReferenceImagesError(
            f"reference folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): put normal images in it"
        )
    if limit is not None:
        if len(paths) < limit:
            raise ReferenceImagesError(
                f"reference folder {folder} holds {len(paths)} image(s) but {limit} are needed: add normal images "
                f"or lower --shots"
            )
        paths = paths[:limit]
    return paths


def load_reference_images(paths: Sequence[Path], size: int, resize: str = DEFAULT_RESIZE) -> Tensor:
    """Read reference images as (K, 3, size, size) in [0, 1], resized as test images are.

    Raises:
        ReferenceImagesError: A file cannot be read.
    """
    if not paths:
        raise ReferenceImagesError("no reference images given: pass --reference DIR of normal images")
    tensors = []
    for path in paths:
        try:
            image = open_rgb(path)
        except ImageLoadError as error:
            raise ReferenceImagesError(
                f"reference image {error}: replace or remove it from the reference folder"
            ) from None
        tensors.append(to_tensor(image, size, resize))
    return torch.stack(tensors)


def load_reference_folder(
    folder: str | Path, size: int, limit: int | None = None, resize: str = DEFAULT_RESIZE
) -> Tensor:
    """:func:`find_reference_images` then :func:`load_reference_images`."""
    return load_reference_images(find_reference_images(folder, limit), size, resize)
