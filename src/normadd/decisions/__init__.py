"""Decisions a line acts on: thresholds and their calibration, OK/NG verdicts, acceptance limits.

Pure functions on scores and maps, like :mod:`normadd.normality.suppression`:

* :mod:`~normadd.decisions.thresholds`: the threshold's quantile rule and F1 calibration;
* :mod:`~normadd.decisions.verdicts`: OK/NG before and after, and ``accepted_by``;
* :mod:`~normadd.decisions.limits`: sized acceptance criteria and region masks;
* :mod:`~normadd.decisions.scale`: the detector identity a threshold belongs to;
* :mod:`~normadd.decisions.policy`: all of it applied to an :class:`AdditionResult`.

``scale`` and ``policy`` read the line config, so import them as submodules.
"""

from normadd.decisions.errors import DecisionError, StaleThresholdError
from normadd.decisions.limits import (
    AcceptanceLimits,
    Size,
    acceptance_mask,
    limited_suppression,
    load_region,
    parse_size,
)
from normadd.decisions.thresholds import (
    FALSE_REJECT_DEFAULT,
    Calibration,
    calibrate_f1,
    calibrate_false_reject,
    check_false_reject,
    check_threshold,
    quantile_threshold,
)
from normadd.decisions.verdicts import (
    COMBINED,
    NG,
    OK,
    UNDECIDED,
    Decision,
    decide,
    decide_batch,
    scores_without_each,
    undecided,
    verdict,
)

__all__ = [
    "COMBINED",
    "FALSE_REJECT_DEFAULT",
    "NG",
    "OK",
    "UNDECIDED",
    "AcceptanceLimits",
    "Calibration",
    "Decision",
    "DecisionError",
    "Size",
    "StaleThresholdError",
    "acceptance_mask",
    "calibrate_f1",
    "calibrate_false_reject",
    "check_false_reject",
    "check_threshold",
    "decide",
    "decide_batch",
    "limited_suppression",
    "load_region",
    "parse_size",
    "quantile_threshold",
    "scores_without_each",
    "undecided",
    "verdict",
]
