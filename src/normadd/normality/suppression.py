"""Normality addition as pure functions on maps (NAND, AIPR 2024).

``A_final = A ⊙ Π_k (1 − s_k · A_sup_k)``: with one normality at full strength this is the
paper's ``A ⊙ (1 − A_sup)``; a strength below 1 suppresses less, 0 changes nothing. Since every
factor lies in [0, 1] and ``A >= 0``, ``A_final <= A`` everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from normadd.errors import InvalidMapError


def check_map(maps: Tensor, name: str) -> Tensor:
    """Refuse maps with NaN/inf values or negative anomaly values.

    Raises:
        InvalidMapError: The map cannot be used (the message names it and the fix).
    """
    if not torch.isfinite(maps).all():
        raise InvalidMapError(f"{name} has NaN or infinite values: check the detector's output")
    if (maps < 0).any():
        raise InvalidMapError(f"{name} has negative values: anomaly maps must be >= 0 (shift them)")
    return maps


def resize_maps(maps: Tensor, size: int) -> Tensor:
    """Resize (B, h, w) maps to (B, size, size), bilinear, so values stay within their range."""
    if maps.shape[-2:] == (size, size):
        return maps
    return F.interpolate(maps.unsqueeze(1).float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def keep_factor(suppression_maps: Tensor, strengths: Tensor) -> Tensor:
    """``Π_k (1 − s_k · A_sup_k)``: how much of the anomaly survives, (B, K, H, W) -> (B, H, W).

    Args:
        suppression_maps: (B, K, H, W) normality maps in [0, 1], one channel per normality.
        strengths: (K,) strengths in [0, 1].
    """
    if suppression_maps.shape[1] == 0:
        return torch.ones(suppression_maps.shape[0], *suppression_maps.shape[2:], device=suppression_maps.device)
    strengths = strengths.to(suppression_maps).view(1, -1, 1, 1)
    return (1.0 - strengths * suppression_maps).prod(dim=1)


def suppress(anomaly_map: Tensor, suppression_map: Tensor, strength: float = 1.0) -> Tensor:
    """One normality: ``A ⊙ (1 − s · A_sup)``, maps of the same shape.

    Raises:
        ValueError: ``strength`` outside [0, 1] or maps of different shapes.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if anomaly_map.shape != suppression_map.shape:
        raise ValueError(f"map shapes differ: {tuple(anomaly_map.shape)} vs {tuple(suppression_map.shape)}")
    return anomaly_map * (1.0 - strength * suppression_map)
