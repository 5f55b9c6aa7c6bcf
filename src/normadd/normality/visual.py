"""Visual normality: a defect type made normal by showing example images instead of naming it.

The examples' patch features inside the masked region (the whole image when no mask is given)
form a small memory per tapped layer. For a test image, ``A_sup`` is, per layer, each patch's
nearest-neighbour cosine similarity to that layer's memory, calibrated into [0, 1], upsampled
to 256 x 256 and averaged over the layers, like the text normality's map. It then enters the
same product ``A ⊙ Π_k (1 − s_k · A_sup_k)`` as text normalities.

Design choices (why):

- **Raw tokens, not projected.** The memory holds the raw residual-stream tokens of the tapped
  layers (L2-normalised), as APRIL-GAN's own few-shot memory and PatchCore do: the trained
  projections are fitted to separate "normal" from "abnormal" text, which folds different
  defects together, while raw tokens keep what tells one defect from another. The memory also
  stays valid when the projections change.
- **Which patches.** The mask is area-pooled onto the patch grid at its full resolution; a patch
  joins the memory when the mask covers more than half of it. A defect smaller than half a patch
  everywhere contributes its best-covered patches instead, so a small mark is never dropped.
- **Calibration into [0, 1].** Raw CLIP tokens are anisotropic (unrelated patches often have
  cosine 0.5 or more), so ``(cos + 1) / 2`` would suppress everything. Per layer, a floor is
  set at the 95th percentile of the similarity between the examples' own patches *outside* their
  masks (coverage 0) and the memory: ``A_sup = clamp((cos − floor) / (1 − floor), 0, 1)``. 95 %
  of the examples' normal surface thus gets no suppression, and a patch equal to a memory patch
  gets 1. Without masks there is no outside to learn from and the floor is 0 (``clamp(cos, 0, 1)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from normadd.backbone.clip_encoder import ClipEncoder
from normadd.errors import InvalidMaskError, NormaddError
from normadd.images import DEFAULT_RESIZE, letterbox_box, open_rgb, to_tensor
from normadd.masks import binary_mask_tensor, check_mask_fits, patch_coverage, read_mask

COVERAGE_THRESHOLD = 0.5
FLOOR_QUANTILE = 0.95


@dataclass
class PatchMemory:
    """The example patches of one visual normality.

    Attributes:
        features: Per tapped layer, (M, width) L2-normalised raw patch tokens.
        floors: Per tapped layer, the similarity that maps to 0 (see the module docstring).
        layers: The tapped blocks the memory was taken from.
        encoder_identity: Backbone and weights the features come from.
        sources: Names of the example images.
    """

    features: list[Tensor]
    floors: list[float]
    layers: tuple[int, ...]
    encoder_identity: str
    sources: list[str]

    @property
    def size(self) -> int:
        """Number of patches in the memory (per layer)."""
        return int(self.features[0].shape[0])


@dataclass
class ExampleImages:
    """Example images at the run size and their masks at each image's own size.

    Attributes:
        images: (K, 3, S, S) RGB in [0, 1].
        masks: One (H, W) 0/1 mask per image, or None for "the whole image".
        sources: A name per image.
        from_files: True when the images were read from files (``sources`` are file names).
    """

    images: Tensor
    masks: list[Tensor | None]
    sources: list[str]
    from_files: bool = False


def _square_tensor(picture: Tensor, size: int, resize: str) -> Tensor:
    """A (3, H, W) image as (3, size, size), squashed or letterboxed as :func:`normadd.images.to_tensor` does."""
    if resize != "letterbox":
        return F.interpolate(picture[None], size=(size, size), mode="bicubic", antialias=True)[0]
    left, top, width, height = letterbox_box(int(picture.shape[-1]), int(picture.shape[-2]), size)
    inner = F.interpolate(picture[None], size=(height, width), mode="bicubic", antialias=True)[0]
    canvas = torch.zeros(3, size, size, dtype=inner.dtype)
    canvas[:, top : top + height, left : left + width] = inner
    return canvas


def _pad_to_square(mask: Tensor) -> Tensor:
    """A (H, W) mask centred on a square of zeros at its own resolution: the letterbox geometry, unscaled."""
    height, width = mask.shape
    side = max(height, width)
    padded = torch.zeros(side, side, dtype=mask.dtype)
    top, left = (side - height) // 2, (side - width) // 2
    padded[top : top + height, left : left + width] = mask
    return padded


def load_examples(
    images: Sequence[str | Path] | Tensor,
    masks: Sequence[str | Path | Tensor | None] | Tensor | None,
    size: int,
    resize: str = DEFAULT_RESIZE,
) -> ExampleImages:
    """Read example images (files or a tensor) and their optional masks, checking every pair.

    Args:
        images: Image files, or a (K, 3, H, W) tensor in [0, 1].
        masks: None, or one mask per image (a file, a (H, W) tensor, or None for the whole image).
        size: The CLIP run size.
        resize: ``squash`` or ``letterbox``, as the line's inspected images; a letterboxed mask
            is padded to a square so its patches line up with the image's.

    Raises:
        NormaddError: No images, or a mask count that differs from the image count.
        InvalidMaskError: A mask of another size than its image, or an empty mask.
        ImageLoadError: An unreadable file.
    """
    count = int(images.shape[0]) if isinstance(images, Tensor) else len(images)
    if count == 0:
        raise NormaddError("an example normality needs at least one example image")
    mask_list: list[str | Path | Tensor | None] = [None] * count if masks is None else list(masks)
    if len(mask_list) != count:
        raise NormaddError(
            f"{len(mask_list)} masks for {count} example images: give one mask per image (in order) or none"
        )
    pictures: list[Tensor] = []
    checked: list[Tensor | None] = []
    sources: list[str] = []
    for index in range(count):
        mask = mask_list[index]
        if isinstance(images, Tensor):
            picture = images[index].float()
            if picture.dim() != 3 or picture.shape[0] != 3:
                raise NormaddError(f"example images must be (K, 3, H, W), got {tuple(images.shape)}")
            source = f"example image {index}"
            pixel_size = tuple(picture.shape[-2:])
            pictures.append(_square_tensor(picture, size, resize))
        else:
            path = Path(images[index])
            source = path.name
            rgb = open_rgb(path)
            pixel_size = (rgb.height, rgb.width)
            pictures.append(to_tensor(rgb, size, resize))
            if isinstance(mask, str | Path):
                check_mask_fits(mask, path)
        if mask is None:
            checked.append(None)
        else:
            what = f"mask {mask}" if isinstance(mask, str | Path) else f"the mask of {source}"
            binary = read_mask(mask) if isinstance(mask, str | Path) else binary_mask_tensor(mask, what)
            if tuple(binary.shape) != pixel_size:
                raise InvalidMaskError(
                    f"{what} is {binary.shape[1]}x{binary.shape[0]} but {source} is "
                    f"{pixel_size[1]}x{pixel_size[0]}: a mask must have its image's size"
                )
            if not bool(binary.any()):
                raise InvalidMaskError(
                    f"{what} is empty (no defect pixel): mark the defect, or leave the mask out to use the whole image"
                )
            checked.append(_pad_to_square(binary) if resize == "letterbox" else binary)
        sources.append(source)
    return ExampleImages(torch.stack(pictures).clamp(0, 1), checked, sources, not isinstance(images, Tensor))


def selected_patches(coverage: Tensor) -> Tensor:
    """Which patches join the memory: coverage > 0.5, else the best-covered ones. (rows, cols) -> (N,) bool."""
    chosen = coverage > COVERAGE_THRESHOLD
    if not bool(chosen.any()):
        chosen = coverage >= coverage.max()
    return chosen.flatten()


def _nearest_similarity(tokens: Tensor, memory: Tensor) -> Tensor:
    """Max cosine similarity of each token to the memory: (B, N, C), (M, C) -> (B, N)."""
    tokens = F.normalize(tokens.float(), dim=-1)
    memory = memory.to(tokens.device)
    return torch.stack([(image @ memory.T).amax(dim=1) for image in tokens])


def build_memory(encoder: ClipEncoder, examples: ExampleImages) -> PatchMemory:
    """Encode the examples once and keep the masked patches of every tapped layer."""
    features = encoder.encode_images(encoder.preprocess(examples.images))
    rows, cols = features.grid_size
    inside: list[Tensor] = []
    outside: list[Tensor] = []
    for mask in examples.masks:
        if mask is None:
            inside.append(torch.ones(rows * cols, dtype=torch.bool))
            outside.append(torch.zeros(rows * cols, dtype=torch.bool))
        else:
            coverage = patch_coverage(mask, (rows, cols))
            inside.append(selected_patches(coverage))
            outside.append((coverage == 0).flatten())
    inside_all = torch.stack(inside).to(encoder.runtime.device)
    outside_all = torch.stack(outside).to(encoder.runtime.device)
    memories: list[Tensor] = []
    floors: list[float] = []
    for tokens in features.patch_tokens:
        normalised = F.normalize(tokens.float(), dim=-1)
        memory = normalised[inside_all].clone()
        memories.append(memory.cpu())
        if bool(outside_all.any()):
            similarity = _nearest_similarity(tokens, memory)[outside_all]
            floors.append(float(torch.quantile(similarity.cpu(), FLOOR_QUANTILE)))
        else:
            floors.append(0.0)
    return PatchMemory(memories, floors, features.layers, encoder.identity, list(examples.sources))


def visual_suppression(
    patch_tokens: list[Tensor], memory: PatchMemory, grid_size: tuple[int, int], size: int
) -> Tensor:
    """``A_sup`` of one visual normality from raw patch tokens: (B, size, size) in [0, 1].

    Args:
        patch_tokens: Per tapped layer, raw tokens (B, N, width) (``ClipFeatures.patch_tokens``).
        memory: The normality's memory, from the same encoder and layers.
        grid_size: (rows, cols) of the patch grid.
        size: Side of the output map.

    Raises:
        NormaddError: The tokens come from other layers than the memory.
    """
    if len(patch_tokens) != len(memory.features):
        raise NormaddError(
            f"the example memory was taken from layers {list(memory.layers)} but {len(patch_tokens)} layers "
            "were tapped: add the example again with this backbone and layers"
        )
    batch = patch_tokens[0].shape[0]
    total = torch.zeros(batch, size, size, device=patch_tokens[0].device)
    for tokens, layer_memory, floor in zip(patch_tokens, memory.features, memory.floors, strict=True):
        similarity = _nearest_similarity(tokens, layer_memory)
        calibrated = ((similarity - floor) / max(1.0 - floor, 1e-6)).clamp(0, 1)
        grid = calibrated.reshape(batch, 1, *grid_size)
        total += F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)[:, 0]
    return total / len(patch_tokens)


def example_name(examples: ExampleImages) -> str:
    """Default name of a visual normality: ``example:<first file stem>`` (``+N`` for more), or ``example``."""
    first = examples.sources[0]
    base = f"example:{Path(first).stem}" if examples.from_files else "example"
    extra = len(examples.sources) - 1
    return f"{base}+{extra}" if extra else base
