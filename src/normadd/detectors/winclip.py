"""WinCLIP and WinCLIP+ (Jeong et al., CVPR 2023): zero- and few-shot anomaly maps from CLIP windows.

Zero-shot: the image and every sliding window (2x2 and 3x3 patches) are embedded by CLIP's image
tower and scored against a compositional prompt ensemble, ``softmax(cos / 0.07)[anomalous]``
(paper eq. 1). Window scores become patch scores by harmonic averaging over the windows that cover
a patch, and the whole-image, 2x2 and 3x3 maps are merged by a harmonic mean. WinCLIP+ (few-shot)
adds a visual memory of the reference images' patch and window embeddings: the score of a patch is
its smallest cosine distance to the memory, halved (eq. 4), averaged over scales, and averaged with
the zero-shot map.

Window embeddings come from open_clip's own modules: the embedded tokens (after ``ln_pre``, which
is per token, so selecting tokens after it equals selecting them before) are gathered per window
with the class token in front and run through the same transformer, ``ln_post``, pooling and
projection as the whole image. The formulas and prompt lists are facts read from the paper and
anomalib 2.7's ``WinClipModel``, which our fixtures check us against.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from normadd.backbone.clip_encoder import ClipEncoder
from normadd.cache import atomic_write_bytes, cache_dir, cache_key
from normadd.detectors.base import DetectionResult, max_scores
from normadd.prompts.templates import NORMAL_STATES
from normadd.prompts.validation import clean_text

TEMPERATURE = 0.07  # CLIP's temperature, as WinCLIP's eq. 1 uses it
SCALES = (2, 3)
IMAGE_SCORES = ("max", "native")

# WinCLIP's compositional prompt ensemble: state words x templates (facts from the paper's appendix).
# Its 7 normal states are APRIL-GAN's (normadd.prompts.templates.NORMAL_STATES); the rest differ.
ANOMALOUS_STATES: tuple[str, ...] = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)
TEXT_CACHE_VERSION = 1


def compositional_prompts(class_name: str) -> tuple[list[str], list[str]]:
    """Normal and anomalous sentences: every state of ``class_name`` in every template, state-major."""
    normal = [template.format(state.format(class_name)) for state in NORMAL_STATES for template in TEMPLATES]
    anomalous = [template.format(state.format(class_name)) for state in ANOMALOUS_STATES for template in TEMPLATES]
    return normal, anomalous


def window_indices(grid_size: tuple[int, int], kernel: int) -> Tensor:
    """Patch indices of every ``kernel`` x ``kernel`` window, stride 1: (n_windows, kernel**2).

    Windows are ordered row-major by their top-left patch; patches inside a window row-major.

    Raises:
        ValueError: The grid is smaller than the window.
    """
    rows, cols = grid_size
    if rows < kernel or cols < kernel:
        raise ValueError(f"a {kernel}x{kernel} window does not fit the {rows}x{cols} patch grid")
    grid = torch.arange(rows * cols).reshape(rows, cols)
    windows = grid.unfold(0, kernel, 1).unfold(1, kernel, 1)  # (rows-k+1, cols-k+1, k, k)
    return windows.reshape(-1, kernel * kernel)


def harmonic_aggregation(window_scores: Tensor, windows: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """Patch score = harmonic mean of the scores of the windows covering it (paper eq. 3).

    Args:
        window_scores: (B, n_windows) scores.
        windows: (n_windows, k) patch indices of each window (:func:`window_indices`).
        grid_size: (rows, cols) of the patch grid.

    Returns:
        (B, rows, cols); a zero window score makes the patch score zero.
    """
    batch = window_scores.shape[0]
    n_patches = grid_size[0] * grid_size[1]
    flat = windows.reshape(-1).to(window_scores.device)
    inverse = (1.0 / window_scores).repeat_interleave(windows.shape[1], dim=1)  # (B, n_windows * k)
    inverse_sum = torch.zeros(batch, n_patches, dtype=window_scores.dtype, device=window_scores.device)
    inverse_sum.scatter_add_(1, flat.expand(batch, -1), inverse)
    coverage = torch.bincount(flat, minlength=n_patches).to(window_scores.dtype)
    return (coverage / inverse_sum).nan_to_num(posinf=0.0).reshape(batch, *grid_size)


def class_probability(embeddings: Tensor, text_embeddings: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """Probability of the anomalous text (paper eq. 1): ``softmax(cos(x, [normal, anomalous]) / T)[1]``.

    Args:
        embeddings: (..., D) image or window embeddings.
        text_embeddings: (2, D) normal and anomalous text embeddings.
        temperature: Softmax temperature.
    """
    cosine = F.normalize(embeddings, dim=-1) @ F.normalize(text_embeddings, dim=-1).T
    return (cosine / temperature).softmax(dim=-1)[..., 1]


def visual_association(embeddings: Tensor, memory: Tensor) -> Tensor:
    """Half the smallest cosine distance of each embedding to the memory (paper eq. 4).

    Args:
        embeddings: (B, N, D).
        memory: (M, D) reference embeddings.

    Returns:
        (B, N) scores in [0, 1].
    """
    cosine = F.normalize(embeddings, dim=-1) @ F.normalize(memory, dim=-1).T
    return (1.0 - cosine).amin(dim=-1) / 2.0


@dataclass
class WinClipEmbeddings:
    """What one image pass gives WinCLIP.

    Attributes:
        image: (B, E) projected whole-image embeddings.
        windows: Per scale, (B, n_windows, E) projected window embeddings.
        patches: (B, N, width) patch tokens after ``ln_post``, not projected (WinCLIP+ compares these).
    """

    image: Tensor
    windows: list[Tensor]
    patches: Tensor


@dataclass
class WinClipPrediction:
    """WinCLIP's own outputs.

    Attributes:
        maps: (B, S, S) anomaly maps at the input size.
        image_scores: (B,) WinCLIP's image score (zero-shot class probability, averaged with the
            few-shot map's max in WinCLIP+).
    """

    maps: Tensor
    image_scores: Tensor


class WinClipDetector:
    """WinCLIP (zero-shot) or WinCLIP+ (few-shot with reference images) on a CLIP encoder.

    Args:
        encoder: The CLIP encoder (``ViT-B-16-plus-240`` in the paper).
        class_name: Object name in the prompts ("bottle").
        reference_images: (K, 3, H, W) normal images in [0, 1] for WinCLIP+; zero-shot when None.
        scales: Window sizes in patches.
        text_embeddings: (2, E) normal/anomalous text embeddings to use instead of the prompt
            ensemble (tests inject random ones).
        image_score: "max" (max of the map, the NAND protocol) or "native" (WinCLIP's own score).
    """

    def __init__(
        self,
        encoder: ClipEncoder,
        class_name: str,
        reference_images: Tensor | None = None,
        scales: tuple[int, ...] = SCALES,
        text_embeddings: Tensor | None = None,
        image_score: str = "max",
    ) -> None:
        if image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score '{image_score}' is unknown: use {' or '.join(IMAGE_SCORES)}")
        self._encoder = encoder
        self.class_name = clean_text(class_name, "class name")
        self.scales = tuple(scales)
        self.image_score = image_score
        grid = encoder.model.visual.grid_size
        self.grid_size = (int(grid[0]), int(grid[1]))
        self.windows = [window_indices(self.grid_size, scale) for scale in self.scales]
        if text_embeddings is None:
            text_embeddings = self._prompt_ensemble()
        self.text_embeddings = text_embeddings.float().to(encoder.runtime.device)
        self.memory: WinClipEmbeddings | None = None
        if reference_images is not None:
            self.set_reference(reference_images)

    @property
    def encoder(self) -> ClipEncoder:
        """The CLIP encoder WinCLIP runs on."""
        return self._encoder

    @property
    def input_size(self) -> int:
        """The CLIP run size (240 for ViT-B-16-plus-240)."""
        return self._encoder.image_size

    @property
    def shots(self) -> int:
        """Number of reference images in the visual memory (0 = zero-shot)."""
        return 0 if self.memory is None else int(self.memory.patches.shape[0])

    @property
    def description(self) -> str:
        """Detector, shots and backbone in one line."""
        mode = f"{self.shots}-shot WinCLIP+" if self.shots else "zero-shot WinCLIP"
        return f"{mode} on {self._encoder.description}"

    def _prompt_ensemble(self) -> Tensor:
        """(2, E): mean of the raw sentence embeddings of the normal and anomalous prompts, cached on disk."""
        normal, anomalous = compositional_prompts(self.class_name)
        key = cache_key(TEXT_CACHE_VERSION, "winclip", self._encoder.identity, normal, anomalous)
        path = cache_dir("text") / f"{key}.pt"
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
        encoded = self._encoder.encode_texts(normal + anomalous)
        embeddings = torch.stack([encoded[: len(normal)].mean(dim=0), encoded[len(normal) :].mean(dim=0)])
        buffer = io.BytesIO()
        torch.save(embeddings, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return embeddings

    @torch.inference_mode()
    def encode(self, pixels: Tensor) -> WinClipEmbeddings:
        """Whole-image, window and patch embeddings of normalised pixels (B, 3, S, S)."""
        visual = self._encoder.model.visual
        with self._encoder.runtime.autocast():
            tokens = visual._embeds(pixels.to(self._encoder.runtime.device))  # (B, 1 + N, width), after ln_pre
            image, patches = self._head(visual.transformer(tokens))
            windows = [self._window_embeddings(tokens, indices) for indices in self.windows]
        return WinClipEmbeddings(image=image.float(), windows=[w.float() for w in windows], patches=patches.float())

    def _head(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        visual = self._encoder.model.visual
        pooled, patch_tokens = visual._pool(tokens)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled, patch_tokens

    def _window_embeddings(self, tokens: Tensor, indices: Tensor) -> Tensor:
        batch, _, width = tokens.shape
        n_windows, kernel = indices.shape
        patches = tokens[:, 1:][:, indices.reshape(-1).to(tokens.device)].reshape(batch, n_windows, kernel, width)
        class_token = tokens[:, :1].unsqueeze(1).expand(batch, n_windows, 1, width)
        sequences = torch.cat([class_token, patches], dim=2).reshape(batch * n_windows, kernel + 1, width)
        pooled, _ = self._head(self._encoder.model.visual.transformer(sequences))
        return pooled.reshape(batch, n_windows, -1)

    def set_reference(self, reference_images: Tensor) -> None:
        """Store the visual memory of K normal images (B, 3, H, W) in [0, 1] (WinCLIP+)."""
        if reference_images.ndim != 4 or reference_images.shape[0] == 0:
            raise ValueError("reference_images must be a (K, 3, H, W) batch with K >= 1")
        self.memory = self.encode(self._encoder.preprocess(reference_images))

    def clear_reference(self) -> None:
        """Forget the visual memory (back to zero-shot)."""
        self.memory = None

    def _zero_shot_map(self, image_scores: Tensor, embeddings: WinClipEmbeddings) -> Tensor:
        rows, cols = self.grid_size
        maps = [image_scores.view(-1, 1, 1).expand(-1, rows, cols)]
        for window_embeddings, indices in zip(embeddings.windows, self.windows, strict=True):
            scores = class_probability(window_embeddings, self.text_embeddings)
            maps.append(harmonic_aggregation(scores, indices, self.grid_size))
        return len(maps) / (1.0 / torch.stack(maps)).sum(dim=0)  # harmonic mean over scales

    def _few_shot_map(self, embeddings: WinClipEmbeddings, memory: WinClipEmbeddings) -> Tensor:
        width = memory.patches.shape[-1]
        batch = embeddings.patches.shape[0]
        maps = [
            visual_association(embeddings.patches, memory.patches.reshape(-1, width)).reshape(batch, *self.grid_size)
        ]
        for window_embeddings, window_memory, indices in zip(
            embeddings.windows, memory.windows, self.windows, strict=True
        ):
            scores = visual_association(window_embeddings, window_memory.reshape(-1, window_memory.shape[-1]))
            maps.append(harmonic_aggregation(scores, indices, self.grid_size))
        return torch.stack(maps).mean(dim=0)

    @torch.inference_mode()
    def predict(self, images: Tensor) -> WinClipPrediction:
        """WinCLIP's maps at the input size and its own image scores, for RGB images in [0, 1]."""
        pixels = self._encoder.preprocess(images)
        embeddings = self.encode(pixels)
        image_scores = class_probability(embeddings.image, self.text_embeddings)
        maps = self._zero_shot_map(image_scores, embeddings)
        if self.memory is not None:
            few_shot = self._few_shot_map(embeddings, self.memory)
            maps = (maps + few_shot) / 2.0
            image_scores = (image_scores + few_shot.amax(dim=(-2, -1))) / 2.0
        maps = F.interpolate(maps.unsqueeze(1), size=pixels.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return WinClipPrediction(maps=maps, image_scores=image_scores)

    def detect(self, images: Tensor) -> DetectionResult:
        """Anomaly maps (B, S, S) in [0, 1] and image scores for RGB images in [0, 1]."""
        prediction = self.predict(images)
        scores = prediction.image_scores if self.image_score == "native" else max_scores(prediction.maps)
        return DetectionResult(maps=prediction.maps, scores=scores)
