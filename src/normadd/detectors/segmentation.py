"""APRIL-GAN's zero-shot text-patch segmentation, as pure functions.

Per tapped layer (``../shared/paper/aprilgan_spec.md``): L2-normalise the projected tokens, logits
``100 · tokens · [f_normal, f_other]`` (a fixed 100, not ``logit_scale``), reshape to the patch
grid, upsample the *logits* bilinearly with ``align_corners=True``, then softmax over the two
classes and keep the second.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

LOGIT_SCALE = 100.0


def layer_map_reference(
    tokens: Tensor, normal: Tensor, other: Tensor, grid_size: tuple[int, int], out_size: int
) -> Tensor:
    """One layer's map, literally as APRIL-GAN computes it (the formula of record).

    Args:
        tokens: Projected patch tokens (B, N, D), N = rows * cols.
        normal: ``f_normal`` (D,).
        other: The text to segment, ``f_abnormal`` or ``f_add`` (D,).
        grid_size: (rows, cols) of the patch grid.
        out_size: Side of the output map.

    Returns:
        (B, out_size, out_size) probability of ``other`` against ``normal``.
    """
    tokens = F.normalize(tokens, dim=-1)
    logits = LOGIT_SCALE * tokens @ torch.stack([normal, other], dim=1)  # (B, N, 2)
    batch = tokens.shape[0]
    logits = logits.permute(0, 2, 1).reshape(batch, 2, *grid_size)
    logits = F.interpolate(logits, size=(out_size, out_size), mode="bilinear", align_corners=True)
    return torch.softmax(logits, dim=1)[:, 1]


def layer_maps(tokens: Tensor, normal: Tensor, others: Tensor, grid_size: tuple[int, int], out_size: int) -> Tensor:
    """One layer's maps for several texts at once: (B, K, out_size, out_size).

    Equal to :func:`layer_map_reference` for each row of ``others``: a two-class softmax is the
    sigmoid of the logit difference, and bilinear upsampling is linear, so the difference is
    taken on the patch grid and only K channels are upsampled (tested to ~1e-6).

    Args:
        tokens: Projected patch tokens (B, N, D).
        normal: ``f_normal`` (D,).
        others: (K, D) texts, each segmented against ``normal``.
        grid_size: (rows, cols) of the patch grid.
        out_size: Side of the output maps.
    """
    tokens = F.normalize(tokens.float(), dim=-1)
    differences = (others - normal.unsqueeze(0)).T  # (D, K)
    logits = LOGIT_SCALE * tokens @ differences  # (B, N, K)
    batch, _, k = logits.shape
    logits = logits.permute(0, 2, 1).reshape(batch, k, *grid_size)
    logits = F.interpolate(logits, size=(out_size, out_size), mode="bilinear", align_corners=True)
    return torch.sigmoid(logits)


def segment(
    projected_tokens: list[Tensor],
    normal: Tensor,
    others: Tensor,
    grid_size: tuple[int, int],
    out_size: int,
    reduce: str,
) -> Tensor:
    """Maps of every text over all layers: (B, K, out_size, out_size).

    Args:
        projected_tokens: Per-layer projected tokens, each (B, N, D).
        normal: ``f_normal`` (D,).
        others: (K, D) texts.
        grid_size: (rows, cols) of the patch grid.
        out_size: Side of the output maps.
        reduce: "sum" over layers (APRIL-GAN's anomaly map, range 0..L) or "mean" (in [0, 1]).
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    normal = normal.to(projected_tokens[0].device)
    others = others.to(projected_tokens[0].device)
    total = sum(layer_maps(t, normal, others, grid_size, out_size) for t in projected_tokens)
    assert isinstance(total, Tensor)
    return total / len(projected_tokens) if reduce == "mean" else total
