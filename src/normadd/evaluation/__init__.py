"""Evaluation: the paper's protocol (NAND, AIPR 2024), our extensions, metrics, cache and reports."""

_EXPORTS = {
    "EvaluationResult": "normadd.evaluation.runner",
    "EvaluationSettings": "normadd.evaluation.runner",
    "evaluate": "normadd.evaluation.runner",
}


def __getattr__(name: str) -> object:
    """Import on first use, so ``normadd --help`` does not load torch through this package."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
