"""User-facing errors: each one is a single line that says what went wrong and how to fix it.

The CLI prints ``str(error)`` and exits with code 2; the Python API raises them as they are.
Nothing here ever carries a traceback to the user.
"""

from __future__ import annotations

import unicodedata

# Characters that move the cursor or reorder text although they are not category Cc.
_INVISIBLE_CONTROLS = {"\u2028", "\u2029", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def printable(text: str) -> str:
    r"""``text`` with every control character written as an escape (``\x1b``, ``\x00``, ``\u202e``).

    User input (a text, a file name) reaches error lines and logs; a terminal escape sequence or
    a NUL in it must arrive there inert and visible, never raw.
    """
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char == " " or (char.isprintable() and char not in _INVISIBLE_CONTROLS):
            out.append(char)
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") or char in _INVISIBLE_CONTROLS:
            out.append(repr(char)[1:-1] if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
        else:
            out.append(char)
    return "".join(out)


class NormaddError(Exception):
    """Base class of every error normadd reports to a user as one clear line.

    Its text is always :func:`printable`: control characters from user input arrive escaped.
    """

    exit_code: int = 2

    def __str__(self) -> str:
        return printable(super().__str__())


class UnknownBackboneError(NormaddError, ValueError):
    """A backbone name that normadd does not know."""


class WeightsNotFoundError(NormaddError, FileNotFoundError):
    """No CLIP weights could be found for a backbone."""


class WeightsMismatchError(NormaddError, ValueError):
    """A weights or projections file that does not fit the chosen backbone."""


class ImageLoadError(NormaddError, ValueError):
    """An image file that cannot be read (corrupt, truncated, empty, too large)."""


class InvalidTextError(NormaddError, ValueError):
    """A normality text or class name that is empty, too long or malformed."""


class InvalidMapError(NormaddError, ValueError):
    """An anomaly or suppression map that has NaN/inf values or the wrong shape."""


class DeviceError(NormaddError, RuntimeError):
    """A device or precision setting that cannot be honoured."""


class InvalidMaskError(NormaddError, ValueError):
    """A defect mask that is missing, empty or of another size than its image."""


class DatasetError(NormaddError, ValueError):
    """A training dataset that cannot be used (wrong layout, no masks, unknown classes)."""


class TrainingDivergedError(NormaddError, RuntimeError):
    """A training loss that became NaN or infinite."""


class ReferenceImagesError(NormaddError, ValueError):
    """Reference (normal) images for a few-shot or memory-bank detector that cannot be used."""


class MemoryBankMismatchError(NormaddError, ValueError):
    """A PatchCore memory bank file that is unreadable or was built with other settings."""


class ExportedModelError(NormaddError, ValueError):
    """An exported model (ONNX, OpenVINO IR, a line export) that cannot be read or does not fit."""
