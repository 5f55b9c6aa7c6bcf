"""OK/NG verdicts before and after the added normalities, and which normalities let a part through.

A part is NG when its score is strictly above the line's threshold, else OK; with no usable
threshold both verdicts are ``undecided`` and a one-line reason says why.

``accepted_by`` (for a part NG before and OK after): each active normality whose removal
**alone** would make the part NG again, i.e. the score after all the *other* normalities is still
above the threshold. Several may be named. When the part flips but no single removal brings NG
back (each is replaceable by the others), the normalities let it through only together:
``combined`` is then True and ``accepted_by`` names every normality with a strength above 0.

Since ``A_final = A ⊙ Π_k (1 − s_k A_sup_k) <= A`` everywhere, ``score_after <= score_before``
and a part can only flip NG -> OK.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

OK = "OK"
NG = "NG"
UNDECIDED = "undecided"
COMBINED = "combined"


def verdict(score: float, threshold: float) -> str:
    """``NG`` when ``score > threshold``, else ``OK`` (a score equal to the threshold passes)."""
    return NG if score > threshold else OK


@dataclass(frozen=True)
class Decision:
    """The verdicts of one part.

    Attributes:
        verdict_before: OK, NG or undecided, on the detector's own ("before") score.
        verdict_after: OK, NG or undecided, after the added normalities.
        accepted_by: For an NG -> OK part, the normalities that let it through (see the module).
        combined: True when no single normality's removal brings NG back: only together.
        reason: Why the verdicts are undecided ("" when decided).
        threshold: The threshold used (None when undecided).
    """

    verdict_before: str
    verdict_after: str
    accepted_by: tuple[str, ...] = ()
    combined: bool = False
    reason: str = ""
    threshold: float | None = None

    @property
    def flipped(self) -> bool:
        """True for a part NG before and OK after."""
        return self.verdict_before == NG and self.verdict_after == OK

    @property
    def accepted_by_text(self) -> str:
        """``accepted_by`` for a table cell or CSV: ``scratch; dent``, ``combined: a + b`` or ""."""
        if self.combined:
            return f"{COMBINED}: {' + '.join(self.accepted_by)}"
        return "; ".join(self.accepted_by)

    def as_dict(self) -> dict[str, object]:
        """The fields an answer, an audit row or a CSV row carries."""
        return {
            "verdict_before": self.verdict_before,
            "verdict_after": self.verdict_after,
            "accepted_by": list(self.accepted_by),
            "accepted_combined": self.combined,
            "verdict_reason": self.reason,
            "threshold": self.threshold,
        }


def undecided(reason: str) -> Decision:
    """Both verdicts undecided, with the one-line reason."""
    return Decision(UNDECIDED, UNDECIDED, reason=reason)


def decide(
    score_before: float,
    score_after: float,
    threshold: float,
    scores_without: dict[str, float] | None = None,
    strengths: dict[str, float] | None = None,
) -> Decision:
    """Verdicts of one part and, when it flips, ``accepted_by``.

    Args:
        score_before: The detector's score.
        score_after: The score after every active normality.
        threshold: NG when a score is above it.
        scores_without: Per normality name, the score after all the *other* normalities.
        strengths: Per normality name, its strength (those at 0 never count as accepting).
    """
    before, after = verdict(score_before, threshold), verdict(score_after, threshold)
    if not (before == NG and after == OK):
        return Decision(before, after, threshold=threshold)
    scores_without = scores_without or {}
    alone = tuple(name for name, score in scores_without.items() if score > threshold)
    if alone:
        return Decision(before, after, alone, threshold=threshold)
    strengths = strengths or {}
    together = tuple(name for name in scores_without if strengths.get(name, 1.0) > 0)
    return Decision(before, after, together, combined=True, threshold=threshold)


def scores_without_each(before: Tensor, suppression: Tensor, strengths: Tensor) -> Tensor:
    """Per image and normality ``k``: ``max(A ⊙ Π_{j≠k} (1 − s_j A_sup_j))``, shape (B, K).

    Args:
        before: (B, H, W) anomaly maps.
        suppression: (B, K, H, W) normality maps (limited ones included, as applied).
        strengths: (K,) strengths.
    """
    count = suppression.shape[1]
    if count == 0:
        return torch.zeros(before.shape[0], 0)
    factors = 1.0 - strengths.to(suppression).view(1, -1, 1, 1) * suppression  # (B, K, H, W)
    columns = []
    for k in range(count):
        others = torch.cat([factors[:, :k], factors[:, k + 1 :]], dim=1).prod(dim=1)
        columns.append((before * others).flatten(1).amax(dim=1))
    return torch.stack(columns, dim=1)


def decide_batch(
    before_scores: Sequence[float] | Tensor,
    after_scores: Sequence[float] | Tensor,
    threshold: float,
    names: Sequence[str],
    strengths: Sequence[float],
    without: Tensor | None = None,
) -> list[Decision]:
    """:func:`decide` for a batch; ``without`` is :func:`scores_without_each`'s (B, K) answer."""
    decisions = []
    for i, (before, after) in enumerate(zip(before_scores, after_scores, strict=True)):
        scores_without = {} if without is None else {n: float(without[i, k]) for k, n in enumerate(names)}
        decisions.append(
            decide(float(before), float(after), threshold, scores_without, dict(zip(names, strengths, strict=True)))
        )
    return decisions


@dataclass
class DecisionCounts:
    """Counts of verdicts over a set of parts (before and after)."""

    parts: int = 0
    ng_before: int = 0
    ng_after: int = 0
    flipped: int = 0
    by_normality: dict[str, int] = field(default_factory=dict)

    def add(self, decision: Decision) -> None:
        """Count one part."""
        self.parts += 1
        self.ng_before += decision.verdict_before == NG
        self.ng_after += decision.verdict_after == NG
        if decision.flipped:
            self.flipped += 1
            key = COMBINED if decision.combined else decision.accepted_by_text
            self.by_normality[key] = self.by_normality.get(key, 0) + 1
