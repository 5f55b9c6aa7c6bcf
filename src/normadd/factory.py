"""Build a ready :class:`NormalityAddition` from a :class:`LineConfig` (the API the CLI uses)."""

from __future__ import annotations

from normadd.backbone.clip_encoder import ClipEncoder
from normadd.backbone.pool import EncoderPool
from normadd.config import LineConfig
from normadd.detectors.aprilgan import AprilGanDetector
from normadd.detectors.projections import load_projections, resolve_projections
from normadd.detectors.registry import build_detector
from normadd.normality.addition import NormalityAddition
from normadd.normality.text_normality import NormalityDetector
from normadd.progress import ProgressHook
from normadd.prompts.llm import LLMPhraseGenerator
from normadd.prompts.phrases import OfflinePhraseGenerator, PhraseGenerator
from normadd.runtime import Runtime


def build_addition(
    config: LineConfig,
    runtime: Runtime | None = None,
    progress: ProgressHook | None = None,
    encoders: EncoderPool | None = None,
) -> NormalityAddition:
    """APRIL-GAN detector on the configured backbone, wrapped with the configured normalities.

    Detector and normality detector share the encoder, projections and text cache, so each
    image goes through CLIP once. Prompts name the line's ``prompt_object``; projections are
    resolved by :func:`resolve_projections` (a path, a name, the environment, the cache).
    ``progress`` sees long set-up steps (a PatchCore fit). With ``encoders``, encoders already
    built in this run are reused (an evaluation over several classes loads each backbone once).
    """
    layers = tuple(config.layers) if config.layers else None
    if encoders is not None:
        encoder = encoders.get(config.backbone, config.weights, layers, runtime, image_size=config.image_size)
    else:
        encoder = ClipEncoder.from_name(
            config.backbone, weights=config.weights, layers=layers, runtime=runtime, image_size=config.image_size
        )
    resolved = resolve_projections(config.projections, encoder.spec.name)
    projections = load_projections(resolved.path, encoder) if resolved is not None else None
    detector = AprilGanDetector(encoder, config.prompt_object, projections, image_score=config.image_score)
    generator: PhraseGenerator = LLMPhraseGenerator() if config.phrase_generator == "llm" else OfflinePhraseGenerator()
    normality_detector = NormalityDetector(
        encoder,
        config.prompt_object,
        projections=detector.projections,
        text_embedder=detector.text_embedder,
        phrase_generator=generator,
    )
    if config.detector != "aprilgan":  # another detector runs beside the APRIL-GAN normality detector
        other = build_detector(config, runtime, progress, encoders)
        addition = NormalityAddition(other, normality_detector=normality_detector)
    else:
        addition = NormalityAddition(detector, normality_detector=normality_detector)
    for setting in config.normalities:
        addition.add(setting.text, setting.strength, setting.name)
    for example in config.examples:
        addition.add_example(example.images, example.masks, example.strength, example.name, config.resize)
    return addition
