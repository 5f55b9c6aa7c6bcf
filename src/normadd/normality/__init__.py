"""Normality: the normality detector (text and visual), suppression formulas and NormalityAddition."""

from normadd.normality.addition import AdditionResult, NormalityAddition
from normadd.normality.suppression import check_map, keep_factor, resize_maps, suppress
from normadd.normality.text_normality import (
    SUPPRESSION_SIZE,
    AddedNormality,
    NormalityDetector,
    parse_normality,
)
from normadd.normality.visual import PatchMemory

__all__ = [
    "SUPPRESSION_SIZE",
    "AddedNormality",
    "AdditionResult",
    "NormalityAddition",
    "NormalityDetector",
    "PatchMemory",
    "check_map",
    "keep_factor",
    "parse_normality",
    "resize_maps",
    "suppress",
]
