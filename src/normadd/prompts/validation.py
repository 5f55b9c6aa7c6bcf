"""Checks on user text (normality texts, class and object names) before any model sees it.

Any printable text is accepted: any script, digits and punctuation, so "dent (small)", "oil stain
10%" and text that merely looks like SQL, HTML, a path or a template ("{{7*7}}") are ordinary
texts. Only empty text, control characters and over-long text are refused. Such text stays inert
wherever it goes: HTML-escaped in the web page and the report, quoted in CSV, a bound parameter in
SQL, an argument (never the template) of every ``str.format``, and never part of a file path.
"""

from __future__ import annotations

import unicodedata

from normadd.errors import InvalidTextError, printable

MAX_TEXT_CHARS = 60
MAX_TEXT_WORDS = 8


def clean_text(text: str, what: str = "normality text") -> str:
    """Return ``text`` trimmed, with runs of spaces collapsed; refuse empty, control characters, over-long.

    Raises:
        InvalidTextError: Empty, over-long, or holding control characters (shown escaped).
    """
    if not isinstance(text, str):
        raise InvalidTextError(f"{what} must be a string, got {type(text).__name__}")
    # Leading and trailing whitespace (a pasted line's newline) is trimmed; inside, spaces of any
    # kind are fine, but control and format characters (NUL, ESC, newlines, bidi overrides) are not.
    if any(unicodedata.category(char)[0] == "C" or unicodedata.category(char) in ("Zl", "Zp") for char in text.strip()):
        raise InvalidTextError(
            f"{what} '{printable(text[:60])}' holds control characters: type plain text, e.g. 'small scratch'"
        )
    cleaned = " ".join(text.split())
    if not cleaned:
        raise InvalidTextError(f"{what} is empty: name the defect type, e.g. 'scratch'")
    if len(cleaned) > MAX_TEXT_CHARS or len(cleaned.split()) > MAX_TEXT_WORDS:
        raise InvalidTextError(
            f"{what} '{cleaned[:40]}…' is too long: use at most {MAX_TEXT_WORDS} words and "
            f"{MAX_TEXT_CHARS} characters, e.g. 'small scratch'"
        )
    return cleaned
