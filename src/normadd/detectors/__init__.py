"""Detectors: the Detector protocol; APRIL-GAN, WinCLIP, PatchCore, saved maps and the anomalib adapter."""

from normadd.detectors.anomalib_adapter import AnomalibDetector
from normadd.detectors.aprilgan import AprilGanDetector
from normadd.detectors.base import ClipFeatureDetector, DetectionResult, Detector, max_scores
from normadd.detectors.patchcore import PatchCoreDetector
from normadd.detectors.projections import LayerProjections, load_projections, save_projections
from normadd.detectors.registry import DETECTORS, build_detector
from normadd.detectors.saved_maps import SavedMapsDetector
from normadd.detectors.segmentation import layer_map_reference, layer_maps, segment
from normadd.detectors.winclip import WinClipDetector

__all__ = [
    "DETECTORS",
    "AnomalibDetector",
    "AprilGanDetector",
    "ClipFeatureDetector",
    "DetectionResult",
    "Detector",
    "LayerProjections",
    "PatchCoreDetector",
    "SavedMapsDetector",
    "WinClipDetector",
    "build_detector",
    "layer_map_reference",
    "layer_maps",
    "load_projections",
    "max_scores",
    "save_projections",
    "segment",
]
