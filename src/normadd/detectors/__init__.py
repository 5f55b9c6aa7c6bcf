"""Detectors: the Detector protocol and APRIL-GAN's zero-shot detector."""

from normadd.detectors.aprilgan import AprilGanDetector
from normadd.detectors.base import ClipFeatureDetector, DetectionResult, Detector, max_scores
from normadd.detectors.projections import LayerProjections, load_projections, save_projections
from normadd.detectors.segmentation import layer_map_reference, layer_maps, segment

__all__ = [
    "AprilGanDetector",
    "ClipFeatureDetector",
    "DetectionResult",
    "Detector",
    "LayerProjections",
    "layer_map_reference",
    "layer_maps",
    "load_projections",
    "max_scores",
    "save_projections",
    "segment",
]
