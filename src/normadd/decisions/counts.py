"""What a quality department counts when a normality is added: rejects, recovered yield, escapes.

For one added group at a threshold, every test part falls in exactly one of three sets — good
parts, parts of the added group, parts of every other defect type — and each set is counted
before and after the addition: good parts **rejected** (NG), parts of the added group
**accepted** (OK: the yield the normality recovers), other defects **accepted** (escapes).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

GOOD = "good"


@dataclass(frozen=True)
class GroupDecisionCounts:
    """Counts for one added group (see the module docstring)."""

    good_images: int
    good_rejected_before: int
    good_rejected_after: int
    group_images: int
    group_accepted_before: int
    group_accepted_after: int
    other_images: int
    other_accepted_before: int
    other_accepted_after: int

    @staticmethod
    def rate(count: int, total: int) -> float | None:
        """``count / total``, None for an empty set."""
        return count / total if total else None


def group_decision_counts(
    defect_types: Sequence[str],
    group_types: Collection[str],
    scores_before: Sequence[float] | np.ndarray,
    scores_after: Sequence[float] | np.ndarray,
    threshold: float,
) -> GroupDecisionCounts:
    """Count good rejects, group accepts and other-defect accepts before and after (NG: score > threshold).

    Args:
        defect_types: Each test image's defect type (``good`` for defect-free ones).
        group_types: The defect types of the added group.
        scores_before: Scores without the normality.
        scores_after: Scores with the group added.
        threshold: The threshold.
    """
    types = np.asarray(defect_types)
    before = np.asarray(scores_before, dtype=np.float64) > threshold
    after = np.asarray(scores_after, dtype=np.float64) > threshold
    good = types == GOOD
    group = np.isin(types, list(group_types)) & ~good
    other = ~good & ~group
    return GroupDecisionCounts(
        good_images=int(good.sum()),
        good_rejected_before=int((before & good).sum()),
        good_rejected_after=int((after & good).sum()),
        group_images=int(group.sum()),
        group_accepted_before=int((~before & group).sum()),
        group_accepted_after=int((~after & group).sum()),
        other_images=int(other.sum()),
        other_accepted_before=int((~before & other).sum()),
        other_accepted_after=int((~after & other).sum()),
    )
