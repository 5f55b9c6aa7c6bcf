"""User-facing errors: each one is a single line that says what went wrong and how to fix it.

The CLI prints ``str(error)`` and exits with code 2; the Python API raises them as they are.
Nothing here ever carries a traceback to the user.
"""

from __future__ import annotations


class NormaddError(Exception):
    """Base class of every error normadd reports to a user as one clear line."""

    exit_code: int = 2


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
