"""Checks on user text (normality texts, class names) before any model sees it."""

from __future__ import annotations

import re

from normadd.errors import InvalidTextError

MAX_TEXT_CHARS = 60
MAX_TEXT_WORDS = 8
_ALLOWED = re.compile(r"^[\w][\w \-'/&.,]*$", re.UNICODE)


def clean_text(text: str, what: str = "normality text") -> str:
    """Return ``text`` trimmed, with runs of spaces collapsed; refuse empty or over-long text.

    Raises:
        InvalidTextError: Empty, over-long, or with characters a prompt cannot hold.
    """
    if not isinstance(text, str):
        raise InvalidTextError(f"{what} must be a string, got {type(text).__name__}")
    cleaned = " ".join(text.split())
    if not cleaned:
        raise InvalidTextError(f"{what} is empty: name the defect type, e.g. 'scratch'")
    if len(cleaned) > MAX_TEXT_CHARS or len(cleaned.split()) > MAX_TEXT_WORDS:
        raise InvalidTextError(
            f"{what} '{cleaned[:40]}…' is too long: use at most {MAX_TEXT_WORDS} words and "
            f"{MAX_TEXT_CHARS} characters, e.g. 'small scratch'"
        )
    if not _ALLOWED.match(cleaned):
        raise InvalidTextError(
            f"{what} '{cleaned}' has characters a prompt cannot hold: use letters, digits, spaces and - ' / & . ,"
        )
    return cleaned
