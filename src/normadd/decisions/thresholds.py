"""Thresholds on image scores and their calibration, as pure functions on score arrays.

A part is **NG** when its score is strictly above the threshold and **OK** otherwise (a score equal
to the threshold passes). Calibration at a target false-reject rate ``α`` on ``n`` defect-free
scores allows ``m = floor(α · n)`` of them above the threshold and sets it at the
``k = n − m``-th smallest score: the empirical ``(1 − α)`` quantile by inverted CDF, i.e.
``numpy.quantile(scores, 1 − α, method="inverted_cdf")`` computed in integers (no rounding
surprise at ``α · n`` whole). Ties: every good score equal to the threshold passes, so the
calibrated false-reject rate on the calibration images is at most ``α`` (ties can only lower it).
With fewer than ``1/α`` images ``m`` is 0 and the threshold is the highest good score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from normadd.decisions.errors import DecisionError

FALSE_REJECT_DEFAULT = 0.01
# A tolerance for α·n that is a whole number up to float error (0.07 * 100 = 7.000000000000001).
_WHOLE_TOLERANCE = 1e-9


def check_threshold(value: object, source: str = "threshold") -> float:
    """A threshold as a float, refusing non-numbers, NaN, infinity and negatives.

    Image scores are maxima of anomaly maps, which normadd requires to be >= 0, so a negative
    threshold would reject every part.

    Raises:
        DecisionError: Not a finite number >= 0 (the message names the fix).
    """
    if isinstance(value, bool):
        raise DecisionError(f"{source} must be a number >= 0, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DecisionError(f"{source} must be a number >= 0, got {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise DecisionError(f"{source} must be a finite number >= 0, got {number}")
    if number < 0:
        raise DecisionError(f"{source} must be >= 0 (image scores are >= 0), got {number:g}")
    return number


def check_false_reject(rate: object) -> float:
    """A target false-reject rate in the open interval (0, 1).

    Raises:
        DecisionError: Outside (0, 1) or not a number.
    """
    try:
        number = float(rate)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DecisionError(f"--false-reject must be a rate in (0, 1), e.g. 0.01, got {rate!r}") from None
    if not (math.isfinite(number) and 0.0 < number < 1.0):
        raise DecisionError(f"--false-reject must be a rate in (0, 1), e.g. 0.01 for 1 %, got {number:g}")
    return number


def _scores(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    scores = np.asarray(values, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise DecisionError(f"no {what} scores to calibrate on: give at least one readable image")
    if not np.isfinite(scores).all():
        raise DecisionError(f"{what} scores have NaN or infinite values: check the detector's output")
    return scores


def allowed_rejects(count: int, false_reject: float) -> int:
    """``floor(α · n)``: how many of ``n`` good images may score above the threshold."""
    return math.floor(false_reject * count + _WHOLE_TOLERANCE)


@dataclass(frozen=True)
class Calibration:
    """A threshold and how it was found.

    Attributes:
        threshold: The score above which a part is NG.
        method: ``false-reject`` or ``f1``.
        false_reject: The target rate (``false-reject`` method), else None.
        good_count: Good images it was calibrated on.
        good_rejected: Good images with a score above the threshold.
        defect_count: Defective images used (``f1``; or given for the escape rate), else 0.
        defects_accepted: Defective images with a score at or below the threshold (escapes).
        f1: F1 of "NG = defective" at this threshold when defects were given, else None.
        resolvable: False when there were too few good images to resolve the target rate
            (fewer than ``1/α``): the threshold is then the highest good score.
    """

    threshold: float
    method: str
    false_reject: float | None
    good_count: int
    good_rejected: int
    defect_count: int = 0
    defects_accepted: int = 0
    f1: float | None = None
    resolvable: bool = True

    @property
    def false_reject_rate(self) -> float:
        """Good images rejected / good images."""
        return self.good_rejected / self.good_count

    @property
    def escape_rate(self) -> float | None:
        """Defective images accepted / defective images (None without defects)."""
        return self.defects_accepted / self.defect_count if self.defect_count else None


def quantile_threshold(good_scores: Sequence[float] | np.ndarray, false_reject: float) -> float:
    """The ``k = n − floor(α·n)``-th smallest good score (see the module docstring).

    Raises:
        DecisionError: No scores, non-finite scores, or ``false_reject`` outside (0, 1).
    """
    false_reject = check_false_reject(false_reject)
    scores = np.sort(_scores(good_scores, "good"))
    rank = scores.size - allowed_rejects(scores.size, false_reject)  # 1-based, >= 1 since α < 1
    return float(scores[rank - 1])


def _counts(threshold: float, good: np.ndarray, defects: np.ndarray) -> tuple[int, int, float | None]:
    good_rejected = int((good > threshold).sum())
    accepted = int((defects <= threshold).sum())
    f1 = None
    if defects.size:
        true_ng = defects.size - accepted
        f1 = 2 * true_ng / (2 * true_ng + good_rejected + accepted) if true_ng else 0.0
    return good_rejected, accepted, f1


def calibrate_false_reject(
    good_scores: Sequence[float] | np.ndarray,
    false_reject: float = FALSE_REJECT_DEFAULT,
    defect_scores: Sequence[float] | np.ndarray = (),
) -> Calibration:
    """Threshold at a target false-reject rate on good scores; escapes counted on ``defect_scores``.

    Raises:
        DecisionError: No good scores, non-finite scores, or a rate outside (0, 1).
    """
    good = _scores(good_scores, "good")
    defects = np.asarray(defect_scores, dtype=np.float64).reshape(-1)
    threshold = quantile_threshold(good, false_reject)
    rejected, accepted, f1 = _counts(threshold, good, defects)
    return Calibration(
        threshold=threshold,
        method="false-reject",
        false_reject=false_reject,
        good_count=int(good.size),
        good_rejected=rejected,
        defect_count=int(defects.size),
        defects_accepted=accepted,
        f1=f1,
        resolvable=allowed_rejects(good.size, false_reject) >= 1,
    )


def calibrate_f1(good_scores: Sequence[float] | np.ndarray, defect_scores: Sequence[float] | np.ndarray) -> Calibration:
    """The threshold with the best F1 for "NG = defective" on labelled scores.

    Candidates are 0 and every distinct score (NG when the score is above the candidate). Ties in
    F1 go to the **lowest** threshold: of equally good thresholds, the one that lets fewer
    defects escape.

    Raises:
        DecisionError: No good or no defect scores, or non-finite scores.
    """
    good = _scores(good_scores, "good")
    defects = _scores(defect_scores, "defect")
    candidates = np.unique(np.concatenate([[0.0], good, defects]))
    good_sorted, defects_sorted = np.sort(good), np.sort(defects)
    # counts at or below each candidate, vectorised
    good_ok = np.searchsorted(good_sorted, candidates, side="right")
    defects_ok = np.searchsorted(defects_sorted, candidates, side="right")
    true_ng = defects.size - defects_ok
    false_ng = good.size - good_ok
    f1 = np.where(true_ng > 0, 2 * true_ng / np.maximum(2 * true_ng + false_ng + defects_ok, 1), 0.0)
    best = int(np.argmax(f1))  # argmax returns the first (lowest) of equal maxima
    threshold = float(candidates[best])
    rejected, accepted, best_f1 = _counts(threshold, good, defects)
    return Calibration(
        threshold=threshold,
        method="f1",
        false_reject=None,
        good_count=int(good.size),
        good_rejected=rejected,
        defect_count=int(defects.size),
        defects_accepted=accepted,
        f1=best_f1,
    )
