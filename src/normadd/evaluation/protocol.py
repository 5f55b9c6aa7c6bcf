"""The NAND evaluation protocol as pure functions: relabelling, subsets and aggregation.

Paper protocol (``../shared/paper/README.md``): for class c and anomaly group g, every test image
of c is kept; label 0 = ``good`` images and images whose defect type is in g, label 1 = every
other defect. Image AUROC per (c, g); class figure = mean over its groups; headline = mean over
classes. Our extensions reuse the same relabelling:

* selectivity of g: for every *other* group h, good images (0) against h's images (1);
* several groups at once: add every group but g, so label 0 = good + all other groups, 1 = g
  (and defect types in no group); measured for classes with at least three groups, where two or
  more normalities are really added together.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np

GOOD = "good"
MIN_GROUPS_FOR_SEVERAL = 3


def relabel(defect_types: Sequence[str], normal_types: Collection[str]) -> np.ndarray:
    """Labels of the protocol: 0 for good images and the added normal types, 1 for all others.

    Args:
        defect_types: Defect type of every test image (``good`` for defect-free ones).
        normal_types: Defect types that now count as normal (the added group or groups).

    Returns:
        (N,) int array of 0/1 labels.
    """
    return np.array([0 if t == GOOD or t in normal_types else 1 for t in defect_types], dtype=np.int64)


def selectivity_subset(defect_types: Sequence[str], other_types: Collection[str]) -> tuple[np.ndarray, np.ndarray]:
    """Good images against one other group's images.

    Returns:
        Indices of the kept images and their labels (0 = good, 1 = the other group).
    """
    keep = np.array([i for i, t in enumerate(defect_types) if t == GOOD or t in other_types], dtype=np.int64)
    labels = np.array([0 if defect_types[i] == GOOD else 1 for i in keep], dtype=np.int64)
    return keep, labels


def still_anomalous_subset(defect_types: Sequence[str], normal_types: Collection[str]) -> np.ndarray:
    """Indices of the images the pixel metrics read: good images and defects that stay anomalous.

    Images of the added group are left out: their defects are normal now, so their masks no
    longer say where the anomalies are.
    """
    return np.array([i for i, t in enumerate(defect_types) if t not in normal_types], dtype=np.int64)


def has_both_labels(labels: np.ndarray) -> bool:
    """True when an AUROC can be computed (both 0 and 1 occur)."""
    return bool(labels.size) and 0 < int(labels.sum()) < labels.size


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """Mean of the values that exist; None when none does."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def class_mean(group_aurocs: Iterable[float | None]) -> float | None:
    """The class figure: mean of its groups' AUROCs (groups without an AUROC are left out)."""
    return mean_or_none(group_aurocs)


def headline(class_means: Iterable[float | None]) -> float | None:
    """The headline figure: mean of the class figures."""
    return mean_or_none(class_means)
