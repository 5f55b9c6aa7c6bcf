"""Build the configured detector by name: APRIL-GAN, WinCLIP, PatchCore, saved maps, an anomalib model or export.

The names are what ``--detector`` and a line config's ``detector:`` accept. APRIL-GAN is built by
:func:`normadd.factory.build_addition` itself, since it shares its CLIP pass with the normality
detector; every other detector comes from :func:`build_detector` and runs beside it in one batch loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from normadd.backbone.clip_encoder import ClipEncoder
from normadd.backbone.pool import EncoderPool
from normadd.backbone.specs import WINCLIP_BACKBONE
from normadd.detectors.base import Detector
from normadd.detectors.reference import find_reference_images, load_reference_folder, load_reference_images
from normadd.errors import NormaddError
from normadd.progress import ProgressHook
from normadd.runtime import Runtime

DETECTORS = ("aprilgan", "winclip", "patchcore", "maps", "anomalib", "onnx", "openvino")
PATCHCORE_BATCH = 16


class DetectorSettings(Protocol):
    """The fields of :class:`normadd.config.LineConfig` a detector reads."""

    class_name: str
    resize: str
    image_score: str
    detector: str
    detector_backbone: str | None
    detector_weights: str | None
    shots: int
    reference: str | None
    maps: str | None
    memory_bank: str | None
    coreset: str
    model: str | None

    @property
    def prompt_object(self) -> str:
        """The object word in the prompts."""
        ...


def check_detector_name(name: str) -> str:
    """Return ``name`` when it is a known detector.

    Raises:
        NormaddError: An unknown name (the message lists the known ones).
    """
    if name not in DETECTORS:
        raise NormaddError(f"detector '{name}' is unknown: choose one of {', '.join(DETECTORS)}")
    return name


def build_winclip(
    settings: DetectorSettings, runtime: Runtime | None = None, encoders: EncoderPool | None = None
) -> Detector:
    """WinCLIP (``shots`` 0) or WinCLIP+ with the first ``shots`` images of ``reference``.

    With ``encoders``, the CLIP encoder is taken from (or added to) the run's pool.
    """
    from normadd.detectors.winclip import WinClipDetector

    if settings.shots < 0:
        raise NormaddError(f"--shots must be 0 (zero-shot) or more, got {settings.shots}")
    if settings.shots > 0 and not settings.reference:
        raise NormaddError(f"--shots {settings.shots} needs --reference DIR of normal images")
    if settings.shots == 0 and settings.reference:
        raise NormaddError(
            "--reference is given but --shots is 0: pass --shots 1 or 5 for WinCLIP+, or drop --reference"
        )
    name = settings.detector_backbone or WINCLIP_BACKBONE
    # The detector's weights come from --detector-weights, not --weights.
    if encoders is not None:
        encoder = encoders.get(name, settings.detector_weights, runtime=runtime, weights_option="--detector-weights")
    else:
        encoder = ClipEncoder.from_name(
            name, weights=settings.detector_weights, runtime=runtime, weights_option="--detector-weights"
        )
    references = None
    if settings.shots > 0 and settings.reference:
        references = load_reference_folder(settings.reference, encoder.image_size, settings.shots, settings.resize)
    image_score = "native" if settings.image_score == "clip" else "max"  # "clip": the detector's own CLIP score
    return WinClipDetector(encoder, settings.prompt_object, reference_images=references, image_score=image_score)


def build_patchcore(
    settings: DetectorSettings, runtime: Runtime | None = None, progress: ProgressHook | None = None
) -> Detector:
    """PatchCore from a saved memory bank, or fitted on ``reference`` (and then saved to ``memory_bank``).

    ``progress`` sees the fit's two stages: feature extraction (images), then the coreset (rows).
    """
    from normadd.detectors.patchcore import DEFAULT_CNN, PatchCoreDetector, resolve_cnn_weights

    backbone = settings.detector_backbone or DEFAULT_CNN
    weights = resolve_cnn_weights(backbone, settings.detector_weights)
    detector = PatchCoreDetector(backbone, weights=weights, runtime=runtime, coreset=settings.coreset)
    bank = Path(settings.memory_bank) if settings.memory_bank else None
    if bank is not None and bank.is_file():
        return detector.load(bank)
    if not settings.reference:
        missing = f"memory bank {bank} does not exist and " if bank is not None else ""
        raise NormaddError(f"PatchCore: {missing}no --reference DIR of normal images to fit one: pass --reference DIR")
    paths = find_reference_images(settings.reference)
    images = load_reference_images(paths, detector.input_size, settings.resize)
    batches = [images[start : start + PATCHCORE_BATCH] for start in range(0, len(images), PATCHCORE_BATCH)]
    detector.fit(batches, progress=progress)
    if bank is not None:
        detector.save(bank)
    return detector


def build_detector(
    settings: DetectorSettings,
    runtime: Runtime | None = None,
    progress: ProgressHook | None = None,
    encoders: EncoderPool | None = None,
) -> Detector:
    """The configured non-APRIL-GAN detector.

    ``progress`` shows a PatchCore fit; CLIP encoders come from ``encoders`` (the run's pool) when given.

    Raises:
        NormaddError: Unknown detector, or missing or bad settings for it (one line naming the fix).
    """
    name = check_detector_name(settings.detector)
    if name == "winclip":
        return build_winclip(settings, runtime, encoders)
    if name == "patchcore":
        return build_patchcore(settings, runtime, progress)
    if name == "maps":
        from normadd.detectors.saved_maps import SavedMapsDetector

        if not settings.maps:
            raise NormaddError(
                "--detector maps needs --maps DIR of saved anomaly maps (one per image, same relative path or stem)"
            )
        return SavedMapsDetector(settings.maps)
    if name == "anomalib":
        from normadd.detectors.anomalib_adapter import AnomalibDetector

        if not settings.detector_weights:
            raise NormaddError("--detector anomalib needs --detector-weights (a .ckpt or exported .pt anomalib model)")
        return AnomalibDetector.from_checkpoint(settings.detector_weights, settings.detector_backbone)
    if name in ("onnx", "openvino"):
        from normadd.detectors.exported import ExportedAnomalibDetector

        if not settings.model:
            kind = "model.onnx" if name == "onnx" else "model.xml (with its .bin) or model.onnx"
            raise NormaddError(f"--detector {name} needs --model PATH: the {kind} an anomalib export wrote")
        return ExportedAnomalibDetector.from_file(settings.model, name)
    raise NormaddError("APRIL-GAN is built by normadd.factory.build_addition, not build_detector")
