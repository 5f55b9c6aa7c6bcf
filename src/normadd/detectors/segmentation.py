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


def _grid_logits(tokens: Tensor, differences: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """Logit differences ``100 · tokens · (f_other − f_normal)`` on the patch grid: (B, K, rows, cols)."""
    tokens = F.normalize(tokens.float(), dim=-1)
    logits = LOGIT_SCALE * tokens @ differences  # (B, N, K)
    batch, _, k = logits.shape
    # Contiguous: a channels-last input takes another interpolate kernel (rounding differs ~1e-6),
    # and one layer alone or all layers concatenated must give the same numbers.
    return logits.permute(0, 2, 1).reshape(batch, k, *grid_size).contiguous()


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
    logits = _grid_logits(tokens, (others - normal.unsqueeze(0)).T, grid_size)
    logits = F.interpolate(logits, size=(out_size, out_size), mode="bilinear", align_corners=True)
    return torch.sigmoid(logits)


# Upsampled layer maps held at once, per image (4 Mi floats = 16 MiB): up to this, all tapped
# layers go through one interpolate and one in-place sigmoid; above it, a few layers at a time.
FUSED_ELEMENTS_PER_IMAGE = 2**22


def segment(
    projected_tokens: list[Tensor],
    normal: Tensor,
    others: Tensor,
    grid_size: tuple[int, int],
    out_size: int,
    reduce: str,
) -> Tensor:
    """Maps of every text over all layers: (B, K, out_size, out_size).

    The same numbers as summing :func:`layer_maps` over the layers (upsample the logits, then the
    sigmoid: APRIL-GAN's order), computed with fewer, larger calls: every layer's K logit
    channels are upsampled together and the sigmoid and the layer sum run in place, so a batch
    allocates one large buffer instead of three per layer.

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
    device = projected_tokens[0].device
    differences = (others.to(device) - normal.to(device).unsqueeze(0)).T  # (D, K)
    k = others.shape[0]
    per_chunk = max(1, FUSED_ELEMENTS_PER_IMAGE // (k * out_size * out_size))
    total: Tensor | None = None
    for start in range(0, len(projected_tokens), per_chunk):
        chunk = projected_tokens[start : start + per_chunk]
        logits = torch.cat([_grid_logits(t, differences, grid_size) for t in chunk], dim=1)  # (B, C*K, r, c)
        maps = F.interpolate(logits, size=(out_size, out_size), mode="bilinear", align_corners=True).sigmoid_()
        layers = maps.view(maps.shape[0], len(chunk), k, out_size, out_size)
        for index in range(len(chunk)):  # layer after layer, in place: the order of a plain sum
            total = layers[:, index] if total is None else total.add_(layers[:, index])
    assert total is not None
    return total.div_(len(projected_tokens)) if reduce == "mean" else total
