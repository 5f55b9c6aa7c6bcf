"""Errors of decisions: each names the bad value and the fix, in one line."""

from __future__ import annotations

from normadd.errors import NormaddError


class DecisionError(NormaddError, ValueError):
    """A threshold, false-reject rate, acceptance limit or region mask that cannot be used."""


class StaleThresholdError(DecisionError):
    """A threshold calibrated on another detector's score scale than the line's current one."""
