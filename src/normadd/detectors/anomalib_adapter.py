"""Any anomalib model as a normadd detector (the ``[anomalib]`` extra).

anomalib users keep their trained model and add normalities on top of it. Accepted:

- an anomalib Lightning module (``Patchcore``, ``Padim``, …, anything with a ``pre_processor``):
  it gets images in [0, 1] and resizes and normalises them itself;
- a bare anomalib torch model (``PatchcoreModel``, ``PadimModel``, …): it gets ImageNet-normalised
  images at ``input_size``, as anomalib's default pre-processor would give it;
- a checkpoint: a Lightning ``.ckpt`` (with the model class name, e.g. ``"Patchcore"``) or a model
  exported with ``engine.export(export_type="torch")`` (``.pt``).

The model's output, an ``InferenceBatch`` (or any object or mapping) with ``anomaly_map`` (B, 1, H, W)
or (B, H, W) and ``pred_score``, becomes a :class:`DetectionResult`. anomalib is imported only when a
checkpoint is loaded; wrapping a module needs nothing but torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from normadd.detectors.base import DetectionResult, max_scores
from normadd.errors import InvalidMapError, NormaddError, WeightsMismatchError, WeightsNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SCORES = ("max", "native")


def _field(output: Any, name: str) -> Tensor | None:
    value = output.get(name) if isinstance(output, Mapping) else getattr(output, name, None)
    return value if isinstance(value, Tensor) else None


class AnomalibDetector:
    """Wraps an anomalib model (Lightning module or torch model) as a normadd detector.

    Args:
        model: The anomalib module.
        input_size: Side of the square images fed to it (anomalib's default is 256).
        normalize: Feed ImageNet-normalised pixels; by default True for bare torch models and False
            for Lightning modules (their pre-processor normalises).
        image_score: "max" (max of the map, the NAND protocol) or "native" (the model's ``pred_score``).
        name: How the description names the model; the class name when None.
    """

    def __init__(
        self,
        model: nn.Module,
        input_size: int = 256,
        normalize: bool | None = None,
        image_score: str = "max",
        name: str | None = None,
    ) -> None:
        if image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score '{image_score}' is unknown: use {' or '.join(IMAGE_SCORES)}")
        self.model = model.eval()
        self._input_size = input_size
        self.normalize = normalize if normalize is not None else not hasattr(model, "pre_processor")
        self.image_score = image_score
        self.name = name or type(model).__name__
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        model_name: str | None = None,
        input_size: int = 256,
        image_score: str = "max",
    ) -> AnomalibDetector:
        """Load a Lightning ``.ckpt`` (needs ``model_name``) or an exported torch model (``.pt``/``.pth``).

        Exported torch models are pickles: load only files you trust, as with anomalib's own
        ``TorchInferencer``.

        Raises:
            WeightsNotFoundError: The file does not exist.
            WeightsMismatchError: It cannot be loaded as an anomalib model.
            NormaddError: anomalib is not installed, or ``model_name`` is missing or unknown.
        """
        path = Path(path)
        if not path.is_file():
            raise WeightsNotFoundError(f"anomalib checkpoint {path} does not exist: fix the path")
        try:
            import anomalib.models as anomalib_models
        except ImportError:
            raise NormaddError("anomalib is not installed: pip install 'normadd[anomalib]'") from None
        if path.suffix == ".ckpt":
            if not model_name:
                raise NormaddError(f"{path} is a Lightning checkpoint: name its anomalib model class, e.g. 'Patchcore'")
            model_class: Any = getattr(anomalib_models, model_name, None)
            if not isinstance(model_class, type):
                raise NormaddError(f"anomalib has no model '{model_name}': use a class name such as Patchcore or Padim")
            try:
                model = cast(Any, model_class).load_from_checkpoint(path, map_location="cpu")
            except Exception as error:
                raise WeightsMismatchError(
                    f"anomalib checkpoint {path} cannot be loaded as {model_name} ({type(error).__name__}: "
                    f"{str(error).splitlines()[0][:160] if str(error) else ''}): pass the checkpoint of that model"
                ) from None
        else:
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as error:
                raise WeightsMismatchError(
                    f"{path} cannot be read ({type(error).__name__}): pass an anomalib .ckpt or an exported torch model"
                ) from None
            model = loaded.get("model") if isinstance(loaded, Mapping) else loaded
            if not isinstance(model, nn.Module):
                raise WeightsMismatchError(
                    f"{path} holds no model (expected engine.export(export_type='torch') output): "
                    "pass an exported model"
                )
        return cls(model, input_size=input_size, image_score=image_score, name=model_name)

    @property
    def input_size(self) -> int:
        """Side of the square images fed to the model."""
        return self._input_size

    @property
    def description(self) -> str:
        """The wrapped model in one line."""
        return f"anomalib {self.name}"

    @torch.inference_mode()
    def detect(self, images: Tensor) -> DetectionResult:
        """Anomaly maps (B, H, W) and image scores for RGB images in [0, 1].

        Raises:
            InvalidMapError: The model returned no ``anomaly_map`` or one of another batch size.
        """
        device = next(self.model.parameters(), torch.empty(0)).device
        pixels = images.to(device, torch.float32)
        if self.normalize:
            pixels = (pixels - self._mean.to(device)) / self._std.to(device)
        output = self.model(pixels)
        maps = _field(output, "anomaly_map")
        if maps is None:
            raise InvalidMapError(
                f"anomalib {self.name} returned no anomaly_map ({type(output).__name__}): wrap a model in eval mode "
                "that outputs an InferenceBatch"
            )
        if maps.ndim == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if maps.ndim != 3 or maps.shape[0] != images.shape[0]:
            raise InvalidMapError(
                f"anomalib {self.name} returned maps of shape {tuple(maps.shape)} for {images.shape[0]} images: "
                "expected (B, H, W) or (B, 1, H, W)"
            )
        maps = maps.float().cpu()
        native = _field(output, "pred_score")
        if self.image_score == "native" and native is not None:
            scores = native.float().reshape(-1).cpu()
        else:
            scores = max_scores(maps)
        return DetectionResult(maps=maps, scores=scores)
