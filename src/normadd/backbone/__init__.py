"""CLIP backbone: model factory on open_clip, weight resolution, tapped-layer features."""

from normadd.backbone.clip_encoder import ClipEncoder, ClipFeatures
from normadd.backbone.specs import (
    BACKBONES,
    DEFAULT_BACKBONE,
    TINY_RANDOM,
    BackboneSpec,
    get_backbone_spec,
)
from normadd.backbone.weights import ResolvedWeights, resolve_weights

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "TINY_RANDOM",
    "BackboneSpec",
    "ClipEncoder",
    "ClipFeatures",
    "ResolvedWeights",
    "get_backbone_spec",
    "resolve_weights",
]
