"""A whole line as one ``nn.Module``: images in, maps before and after its normalities out.

:class:`LineGraph` holds the CLIP image tower with its tapped layers, the APRIL-GAN projections,
the normal and abnormal text embeddings, and each active normality's ``f_add`` and strength as
constants. ``forward`` runs the same math as :meth:`NormalityAddition.explain` (the APRIL-GAN
detector sharing its CLIP pass with the normality detector), in a form ``torch.onnx.export`` and
OpenVINO trace: no ``inference_mode``, no Python objects on the way, fixed output names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normadd.detectors.aprilgan import AprilGanDetector
from normadd.detectors.base import max_scores
from normadd.detectors.segmentation import segment
from normadd.errors import NormaddError
from normadd.normality.addition import NormalityAddition
from normadd.normality.suppression import resize_maps

INPUT_NAME = "images"
OUTPUT_NAMES = ("before", "suppression", "keep", "after", "before_scores", "after_scores", "detector_scores")


class LineGraph(nn.Module):
    """The exportable graph of a line (APRIL-GAN detector, text normalities).

    Input ``images``: (B, 3, S, S) RGB in [0, 1] at the run size ``S`` (made square as
    :func:`normadd.images.load_image` does with the line's ``resize``, which the manifest records).
    Outputs, in :data:`OUTPUT_NAMES` order: ``before`` (B, H, W), ``suppression`` (B, K, H, W),
    ``keep`` (B, H, W), ``after`` (B, H, W) and the (B,) ``before_scores``, ``after_scores`` and
    ``detector_scores``; H = W = the suppression size.

    Build it with :meth:`from_addition`.
    """

    mean: Tensor
    std: Tensor
    normal: Tensor
    abnormal: Tensor
    added: Tensor
    strengths: Tensor

    def __init__(
        self,
        visual: nn.Module,
        projections: nn.Module,
        layers: tuple[int, ...],
        grid_size: tuple[int, int],
        input_size: int,
        map_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        normal: Tensor,
        abnormal: Tensor,
        added: Tensor,
        strengths: Tensor,
    ) -> None:
        super().__init__()
        self.visual: Any = visual  # open_clip's VisionTransformer (forward_intermediates)
        self.projections = projections
        self.indices = [layer - 1 for layer in layers]
        self.grid_size = grid_size
        self.input_size = input_size
        self.map_size = map_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("normal", normal.detach().float().cpu().clone())
        self.register_buffer("abnormal", abnormal.detach().float().cpu().clone().view(1, -1))
        self.register_buffer("added", added.detach().float().cpu().clone())
        self.register_buffer("strengths", strengths.detach().float().cpu().clone().view(1, -1, 1, 1))

    @classmethod
    def from_addition(cls, addition: NormalityAddition) -> LineGraph:
        """The graph of a built line: its detector must be APRIL-GAN, its normalities text ones.

        Raises:
            NormaddError: Another detector, or a visual normality (neither can be exported yet).
        """
        detector = addition.detector
        if not isinstance(detector, AprilGanDetector) or not addition.shares_clip_pass:
            raise NormaddError(
                f"only APRIL-GAN lines can be exported, this line runs {detector.description}: "
                "use detector: aprilgan, or export the detector with its own tool (anomalib export)"
            )
        if detector.image_score != "max":
            raise NormaddError(
                f"image_score '{detector.image_score}' cannot be exported (the graph scores by the map's max): "
                "export the line with image_score: max"
            )
        normalities = list(addition.normalities.values())
        visual = [n.name for n in normalities if n.kind == "visual" or n.embedding is None]
        if visual:
            raise NormaddError(
                f"visual normalities {visual} cannot be exported (only text normalities are graph constants): "
                "remove them from the line before exporting"
            )
        encoder = detector.encoder
        if encoder.runtime.device.type != "cpu":
            raise NormaddError("export runs on the CPU: build the line with --device cpu")
        embed_dim = encoder.embed_dim
        added = (
            torch.stack([n.embedding for n in normalities if n.embedding is not None])
            if normalities
            else torch.zeros(0, embed_dim)
        )
        strengths = torch.tensor([n.strength for n in normalities], dtype=torch.float32)
        grid = encoder.model.visual.grid_size
        return cls(
            visual=encoder.model.visual,
            projections=detector.projections,
            layers=encoder.spec.layers,
            grid_size=(int(grid[0]), int(grid[1])),
            input_size=encoder.image_size,
            map_size=addition.normality_detector.size,
            mean=encoder.spec.mean,
            std=encoder.spec.std,
            normal=detector.normal_embedding,
            abnormal=detector.abnormal_embedding,
            added=added,
            strengths=strengths,
        ).eval()

    @property
    def num_normalities(self) -> int:
        """How many normalities are constants of the graph."""
        return int(self.added.shape[0])

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Maps and scores before and after the line's normalities (see the class docstring)."""
        pixels = (images - self.mean) / self.std
        out = self.visual.forward_intermediates(
            pixels, indices=self.indices, output_fmt="NLC", intermediates_only=True, stop_early=True
        )
        projected = [t.float() for t in self.projections(list(out["image_intermediates"]))]
        # APRIL-GAN's anomaly map at the run size (layers summed), then the paper's protocol size.
        native = segment(projected, self.normal, self.abnormal, self.grid_size, self.input_size, "sum")[:, 0]
        before = resize_maps(native, self.map_size)
        if self.num_normalities:
            suppression = segment(projected, self.normal, self.added, self.grid_size, self.map_size, "mean")
            keep = (1.0 - self.strengths * suppression).prod(dim=1)  # Π_k (1 − s_k A_sup_k)
        else:
            suppression = before.new_zeros(before.shape[0], 0, self.map_size, self.map_size)
            keep = torch.ones_like(before)
        after = before * keep
        return before, suppression, keep, after, max_scores(before), max_scores(after), max_scores(native)
