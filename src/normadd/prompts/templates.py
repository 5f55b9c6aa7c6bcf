"""The APRIL-GAN / WinCLIP prompt ensembles and their expansion into sentences.

The state and template lists are facts taken from APRIL-GAN's public code
(``prompt_ensemble.py``, MIT): 7 normal states, 5 abnormal states and 35 templates. Expansion is
state-major (all templates of the first state, then the next), as the reference does.
"""

from __future__ import annotations

from collections.abc import Sequence

NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)

ABNORMAL_STATES: tuple[str, ...] = (
    "damaged {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)

TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of my {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "a dark photo of a {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)


def default_object_name(class_name: str) -> str:
    """The object word of a class folder when none is configured: ``_`` as spaces (``metal_nut``: ``metal nut``)."""
    return " ".join(class_name.replace("_", " ").split()) or class_name


def fill_states(states: Sequence[str], object_name: str) -> list[str]:
    """Put the object name into each state pattern ("flawless {}" -> "flawless bottle")."""
    return [state.format(object_name) for state in states]


def expand_templates(phrases: Sequence[str], templates: Sequence[str] = TEMPLATES) -> list[str]:
    """Every phrase in every template, phrase-major: len(phrases) * len(templates) sentences."""
    return [template.format(phrase) for phrase in phrases for template in templates]
