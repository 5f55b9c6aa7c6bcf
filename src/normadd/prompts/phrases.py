"""Offline phrase generator: (class, defect text) -> short state phrases, with no network.

A small lexicon knows the defect words of industrial inspection (every MVTec AD defect type
among them) as adjectives ("cracked") and nouns ("crack"); unknown words fall back to rules by
their form. For *poke* on *capsule* it gives "poked capsule", "capsule with a poke hole", …
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from normadd.prompts.validation import clean_text

MAX_PHRASES = 8


@dataclass(frozen=True)
class DefectWords:
    """How a defect type is said: as adjectives of the object and as nouns on it."""

    adjectives: tuple[str, ...] = ()
    nouns: tuple[str, ...] = ()


LEXICON: dict[str, DefectWords] = {
    "broken": DefectWords(("broken", "cracked", "fractured", "chipped"), ("broken part", "crack")),
    "crack": DefectWords(("cracked", "fractured"), ("crack", "fracture")),
    "poke": DefectWords(("poked", "punctured", "fractured"), ("poke hole", "puncture")),
    "hole": DefectWords(("holed", "punctured", "perforated"), ("hole", "puncture")),
    "cut": DefectWords(("cut", "torn", "slit"), ("cut", "tear", "slit")),
    "scratch": DefectWords(("scratched", "scraped"), ("scratch", "scrape mark")),
    "contamination": DefectWords(
        ("contaminated", "dirty", "stained"), ("contamination", "foreign particle", "dirt spot")
    ),
    "metal": DefectWords(("metal contaminated",), ("metal contamination", "metal piece")),
    "metal contamination": DefectWords(("metal contaminated",), ("metal piece", "metal fragment")),
    "color": DefectWords(("discolored", "stained", "off-color"), ("color stain", "discoloration")),
    "thread": DefectWords(("threaded",), ("loose thread", "stray thread", "thread")),
    "glue": DefectWords(("glued", "glue-stained"), ("glue spot", "glue residue")),
    "glue strip": DefectWords(("glue-stained",), ("glue strip", "strip of glue")),
    "oil": DefectWords(("oily", "oil-stained"), ("oil stain", "oil spot")),
    "liquid": DefectWords(("wet", "liquid-stained"), ("liquid stain", "liquid drop")),
    "fold": DefectWords(("folded", "creased", "wrinkled"), ("fold", "crease")),
    "print": DefectWords(("printed", "misprinted"), ("print", "printed mark")),
    "faulty imprint": DefectWords(("misprinted",), ("faulty imprint", "smeared print")),
    "bent": DefectWords(("bent", "deformed", "warped"), ("bend", "deformation")),
    "bent wire": DefectWords(("bent-wired",), ("bent wire", "deformed wire")),
    "bent lead": DefectWords(("bent-lead",), ("bent lead", "bent pin")),
    "cut lead": DefectWords(("cut-lead",), ("cut lead", "short lead")),
    "squeeze": DefectWords(("squeezed", "crushed", "deformed"), ("dent", "deformation")),
    "flip": DefectWords(("flipped", "upside-down"), ("flipped side",)),
    "rough": DefectWords(("rough", "uneven"), ("rough surface", "rough patch")),
    "gray stroke": DefectWords(("gray-streaked",), ("gray stroke", "gray streak")),
    "misplaced": DefectWords(("misplaced", "misaligned", "missing"), ("misplaced part",)),
    "damaged case": DefectWords(("case-damaged",), ("damaged case", "broken case")),
    "missing wire": DefectWords(("incomplete",), ("missing wire", "gap where a wire is missing")),
    "missing cable": DefectWords(("incomplete",), ("missing cable", "empty cable slot")),
    "cable swap": DefectWords(("miswired",), ("swapped cable", "wrong cable color")),
    "cut insulation": DefectWords(("cut",), ("cut insulation", "damaged insulation")),
    "pill type": DefectWords(("wrong-type",), ("wrong pill type", "different pill")),
    "manipulated front": DefectWords(("manipulated",), ("manipulated front", "damaged tip")),
    "scratch head": DefectWords(("scratched",), ("scratched head", "scratch on the head")),
    "scratch neck": DefectWords(("scratched",), ("scratched neck", "scratch on the neck")),
    "fabric": DefectWords(("frayed",), ("fabric defect", "frayed fabric")),
    "teeth": DefectWords(("broken-toothed",), ("broken teeth", "damaged teeth")),
    "dent": DefectWords(("dented",), ("dent",)),
    "stain": DefectWords(("stained",), ("stain", "spot")),
    "bubble": DefectWords(("bubbled",), ("bubble", "air bubble")),
    "chip": DefectWords(("chipped",), ("chip", "chipped edge")),
}


class PhraseGenerator(Protocol):
    """Anything that turns (class, defect text) into state phrases."""

    def phrases(self, class_name: str, text: str) -> list[str]:
        """Return short state phrases describing ``class_name`` with defect ``text``."""
        ...


_CONSONANT_SOUND_PREFIXES = ("uni", "use", "usu", "ut", "eu", "ew", "one", "once")
_VOWEL_SOUND_PREFIXES = ("hour", "honest", "honor", "honour", "heir", "8", "11", "18")


def with_article(noun_phrase: str) -> str:
    """``noun_phrase`` with "a" or "an" by its first sound: "an uneven area", "a unit", "an oil stain".

    Decided by spelling: a vowel letter takes "an", except words that start with a "y"/"w" sound
    (uni-, use-, eu-, one); a few silent-h words and numbers said with a vowel ("8", "11") take "an".
    """
    word = noun_phrase.lower()
    if word.startswith(_VOWEL_SOUND_PREFIXES):
        return f"an {noun_phrase}"
    if word[:1] in "aeiou" and word[:1] and not word.startswith(_CONSONANT_SOUND_PREFIXES):
        return f"an {noun_phrase}"
    return f"a {noun_phrase}"


def _normal_form(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").replace("-", " ").split())


def _looks_like_adjective(text: str) -> bool:
    last = text.split()[-1]
    return last.endswith(("ed", "en", "ty", "ky", "gy")) or last in {"bent", "cut", "torn", "worn"}


class OfflinePhraseGenerator:
    """Lexicon + rules phrase generator; deterministic and needs no network."""

    def __init__(self, lexicon: dict[str, DefectWords] | None = None, limit: int = MAX_PHRASES):
        self.lexicon = LEXICON if lexicon is None else lexicon
        self.limit = limit

    def phrases(self, class_name: str, text: str) -> list[str]:
        """State phrases for ``text`` on ``class_name``, the plain "<text> <class>" first.

        Raises:
            InvalidTextError: Empty or over-long text or class name.
        """
        obj = clean_text(class_name, "class name")
        defect = clean_text(text)
        key = _normal_form(defect)
        words = self.lexicon.get(key) or self.lexicon.get(key.rstrip("s"))
        candidates: list[str] = []
        if words is None:
            if _looks_like_adjective(key):
                candidates += [f"{key} {obj}", f"{obj} that is {key}", f"{obj} with {with_article(f'{key} area')}"]
            else:
                defect_phrase = with_article(f"{key} defect")
                candidates += [f"{obj} with {key}", f"{obj} with {defect_phrase}", f"{key} on the {obj}"]
        else:
            candidates.append(f"{key} {obj}" if key in words.adjectives else f"{obj} with {key}")
            candidates += [f"{adjective} {obj}" for adjective in words.adjectives]
            candidates += [f"{obj} with {with_article(noun)}" for noun in words.nouns]
        unique = list(dict.fromkeys(candidates))
        return unique[: self.limit]
