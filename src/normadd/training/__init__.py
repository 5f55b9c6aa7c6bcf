"""Training: APRIL-GAN's per-layer projections learned from images with defect masks."""

_EXPORTS = {
    "MaskedImageDataset": "normadd.training.dataset",
    "MaskedSample": "normadd.training.dataset",
    "aprilgan_loss": "normadd.training.losses",
    "dice_loss": "normadd.training.losses",
    "focal_loss": "normadd.training.losses",
    "ProjectionTrainer": "normadd.training.trainer",
    "StepReport": "normadd.training.trainer",
    "TrainingResult": "normadd.training.trainer",
    "TrainingSettings": "normadd.training.trainer",
    "training_state_path": "normadd.training.trainer",
}


def __getattr__(name: str) -> object:
    """Import on first use, so ``normadd --help`` does not load torch through this package."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
