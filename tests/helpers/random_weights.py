"""Seeded random weights for a ResNet state_dict that any library with torch 2.14 redraws identically.

timm and torchvision initialise ResNets differently (timm zeroes every ``bn3.weight``, which
silences the residual branches), so a comparison on their own random weights proves little. Both
sides instead overwrite every float tensor from one ``torch.Generator`` in sorted key order: conv
weights Kaiming-normal, BatchNorm weights, biases and running statistics drawn too. Only the seed
travels in the fixtures; :func:`checksum` guards against a torch whose generator draws differently.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def redraw(state_dict: dict[str, Tensor], seed: int = 0) -> dict[str, Tensor]:
    """A copy of ``state_dict`` with every float tensor redrawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for key in sorted(state_dict):
        tensor = state_dict[key]
        if not tensor.is_floating_point():
            out[key] = tensor.clone()
            continue
        shape = tensor.shape
        if key.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith("running_mean") or key.endswith("bias"):
            value = 0.1 * torch.randn(shape, generator=generator)
        elif tensor.ndim == 1:  # BatchNorm scale
            value = 0.5 + 0.5 * torch.rand(shape, generator=generator)
        else:
            fan_in = math.prod(shape[1:])
            value = torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)
        out[key] = value.to(tensor.dtype)
    return out


def checksum(state_dict: dict[str, Tensor]) -> float:
    """Sum of absolute values of all float tensors (float64), to check two redraws agree."""
    return float(sum(t.double().abs().sum() for t in state_dict.values() if t.is_floating_point()))
