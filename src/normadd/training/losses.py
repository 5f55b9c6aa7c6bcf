"""APRIL-GAN's training loss as pure functions: focal + dice on each layer's map against the mask.

Facts from the public APRIL-GAN code (``loss.py``, ``train.py``), reimplemented here:

- the maps are the per-layer *probabilities* at the image size (logits upsampled bilinearly with
  ``align_corners=True``, then a two-class softmax), not logits;
- focal loss (Lin et al. 2017) on both channels, gamma 2, no class weights, label smoothing 1e-5
  (the one-hot target is clamped to [1e-5, 1 - 1e-5] and 1e-5 is added to ``p_t``), mean over
  pixels;
- dice loss on the abnormal channel only, smoothing 1, per image, averaged over the batch;
- total = sum over tapped layers of (focal + dice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

FOCAL_GAMMA = 2.0
FOCAL_SMOOTH = 1e-5
DICE_SMOOTH = 1.0


def focal_loss(
    probabilities: Tensor, target: Tensor, gamma: float = FOCAL_GAMMA, smooth: float = FOCAL_SMOOTH
) -> Tensor:
    """Mean focal loss ``-(1 - p_t)^gamma · log p_t`` of class probabilities against class labels.

    Args:
        probabilities: (B, C, H, W) probabilities (softmax over C), C >= 2.
        target: (B, H, W) class index per pixel (0 = normal, 1 = defect).
        gamma: Focusing exponent.
        smooth: Label smoothing: the one-hot target is clamped to [smooth / (C - 1), 1 - smooth]
            and ``smooth`` is added to ``p_t`` so the log never sees 0.
    """
    num_classes = probabilities.shape[1]
    one_hot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).to(probabilities.dtype)
    one_hot = one_hot.clamp(smooth / (num_classes - 1), 1.0 - smooth)
    p_t = (one_hot * probabilities).sum(dim=1) + smooth
    return (-((1.0 - p_t) ** gamma) * torch.log(p_t)).mean()


def dice_loss(probability: Tensor, target: Tensor, smooth: float = DICE_SMOOTH) -> Tensor:
    """``1 − mean_b (2 |P ∩ T| + s) / (|P| + |T| + s)``, soft, per image.

    Args:
        probability: (B, H, W) defect probability.
        target: (B, H, W) 0/1 mask.
        smooth: Added to numerator and denominator (an empty mask and an all-zero prediction
            give a loss of 0).
    """
    batch = target.shape[0]
    predicted = probability.reshape(batch, -1)
    truth = target.reshape(batch, -1).to(predicted.dtype)
    overlap = (predicted * truth).sum(dim=1)
    dice = (2.0 * overlap + smooth) / (predicted.sum(dim=1) + truth.sum(dim=1) + smooth)
    return 1.0 - dice.mean()


def aprilgan_loss(layer_maps: list[Tensor], target: Tensor) -> Tensor:
    """APRIL-GAN's loss: ``Σ_layers focal([1 − p, p], mask) + dice(p, mask)``.

    Args:
        layer_maps: Per tapped layer, (B, H, W) probability of "abnormal" at the mask size.
        target: (B, H, W) 0/1 masks.
    """
    total = torch.zeros((), device=target.device)
    for abnormal in layer_maps:
        both = torch.stack([1.0 - abnormal, abnormal], dim=1)
        total = total + focal_loss(both, target) + dice_loss(abnormal, target)
    return total
