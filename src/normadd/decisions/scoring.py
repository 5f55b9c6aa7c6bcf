"""The detector's own ("before") scores of image folders: what a threshold is calibrated on.

Scores are read exactly as an inspection reads ``score_before`` (the max of the detector's map at
the normality detector's size), with no normality computed, so a calibrated threshold compares
with inspection scores on one scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from normadd.decisions.errors import DecisionError
from normadd.errors import ImageLoadError
from normadd.images import LoadFailure, collect_images, load_batch
from normadd.normality.addition import NormalityAddition


@dataclass
class FolderScores:
    """Scores of the readable images of one folder, and the images that could not be read."""

    paths: list[Path] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    failures: list[LoadFailure] = field(default_factory=list)


def detector_only(addition: NormalityAddition) -> NormalityAddition:
    """The same detector with no normality (nothing but "before" is computed)."""
    return NormalityAddition(addition.detector, normality_detector=addition.normality_detector)


def folder_images(folder: str | Path, option: str) -> list[Path]:
    """The images of a folder (recursively, sorted), checked before any model loads.

    Raises:
        DecisionError: The folder does not exist or holds no image.
    """
    try:
        return collect_images([folder])
    except ImageLoadError as error:
        raise DecisionError(f"{option} {folder}: {error}") from None


def score_folder(
    addition: NormalityAddition,
    folder: str | Path | Sequence[Path],
    option: str,
    batch_size: int = 8,
    on_progress: Callable[[int], None] | None = None,
) -> FolderScores:
    """"Before" scores of every image in ``folder`` (recursively), or of a list of image files.

    Args:
        addition: The line's detector (its normalities are ignored).
        folder: A folder of images, one image, or the list :func:`folder_images` gave.
        option: The option that named it, for messages (``--good``).
        batch_size: Images per forward pass.
        on_progress: Called with the number of images handled after each batch.

    Raises:
        DecisionError: The folder does not exist, holds no image, or no image could be read.
    """
    paths = folder_images(folder, option) if isinstance(folder, str | Path) else [Path(p) for p in folder]
    detector = detector_only(addition)
    found = FolderScores()
    check_images = getattr(addition.detector, "check_images", None)
    if callable(check_images):
        check_images(paths)
    prepare_batch = getattr(addition.detector, "prepare_batch", None)
    for start in range(0, len(paths), batch_size):
        chunk: Sequence[Path] = paths[start : start + batch_size]
        loaded, images, failures = load_batch(chunk, addition.input_size)
        found.failures += failures
        if images is not None:
            if callable(prepare_batch):
                prepare_batch(loaded)
            result = detector.explain(images)
            found.paths += loaded
            found.scores += [float(s) for s in result.before_scores]
        if on_progress is not None:
            on_progress(len(chunk))
    if not found.scores:
        where = f"{option} {folder}" if isinstance(folder, str | Path) else option
        raise DecisionError(f"{where}: no readable image ({len(found.failures)} could not be read)")
    return found
