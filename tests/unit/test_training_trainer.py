"""Training the projections: seeded and reproducible, resumable, and never saving a diverged run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import normadd.training.trainer as trainer_module
from helpers.synthetic_mvtec import write_class
from normadd.backbone import TINY_RANDOM, ClipEncoder
from normadd.detectors.projections import load_projections, save_projections
from normadd.errors import TrainingDivergedError, WeightsMismatchError, WeightsNotFoundError
from normadd.prompts.text_embedding import TextEmbedder
from normadd.training import MaskedImageDataset, ProjectionTrainer, TrainingSettings, training_state_path


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    return ClipEncoder.from_name(TINY_RANDOM)


@pytest.fixture(scope="module")
def texts(encoder: ClipEncoder) -> TextEmbedder:
    return TextEmbedder(encoder, disk_cache=False)  # encode the class prompts once for the module


@pytest.fixture()
def dataset(tmp_path: Path, encoder: ClipEncoder) -> MaskedImageDataset:
    write_class(tmp_path / "data", defects=4, goods=2)
    return MaskedImageDataset.from_mvtec(tmp_path / "data", encoder.image_size)


def _settings(**overrides: object) -> TrainingSettings:
    base: dict[str, object] = {"epochs": 2, "batch_size": 3, "mosaic_rate": 0.5, "seed": 7}
    return TrainingSettings(**{**base, **overrides})  # type: ignore[arg-type]


def _trainer(encoder: ClipEncoder, texts: TextEmbedder, settings: TrainingSettings) -> ProjectionTrainer:
    return ProjectionTrainer(encoder, settings, text_embedder=texts)


def _weights(trainer_result: trainer_module.TrainingResult) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer_result.projections.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_seeded_training_is_reproducible(
    encoder: ClipEncoder, texts: TextEmbedder, dataset: MaskedImageDataset
) -> None:
    first = _trainer(encoder, texts, _settings()).fit(dataset)
    second = _trainer(encoder, texts, _settings()).fit(dataset)
    assert _same(_weights(first), _weights(second))
    assert first.step_losses == second.step_losses
    other_seed = _trainer(encoder, texts, _settings(seed=8)).fit(dataset)
    assert not _same(_weights(first), _weights(other_seed))


def test_training_moves_the_weights_away_from_their_initialisation(
    encoder: ClipEncoder, texts: TextEmbedder, dataset: MaskedImageDataset
) -> None:
    trainer = _trainer(encoder, texts, _settings())
    initial = trainer.new_projections().state_dict()
    trained = trainer.fit(dataset).projections.state_dict()
    assert not _same(dict(initial), dict(trained))
    assert not trained["fc.0.weight"].requires_grad


def test_resume_continues_from_the_saved_epoch(
    encoder: ClipEncoder, texts: TextEmbedder, dataset: MaskedImageDataset, tmp_path: Path
) -> None:
    straight = _trainer(encoder, texts, _settings(epochs=3)).fit(dataset, out=tmp_path / "straight.pth")
    _trainer(encoder, texts, _settings(epochs=1)).fit(dataset, out=tmp_path / "interrupted.pth")
    resumed = _trainer(encoder, texts, _settings(epochs=3)).fit(
        dataset, out=tmp_path / "interrupted.pth", resume=tmp_path / "interrupted.pth"
    )
    assert resumed.start_epoch == 1
    assert len(resumed.step_losses) == 2 * len(straight.step_losses) // 3  # only epochs 2 and 3 ran
    assert resumed.epoch_losses == pytest.approx(straight.epoch_losses)
    assert _same(_weights(resumed), _weights(straight))
    state = torch.load(training_state_path(tmp_path / "interrupted.pth"), weights_only=True)
    assert state["epoch"] == 3


def test_the_checkpoint_records_backbone_layers_and_loads_for_inspection(
    encoder: ClipEncoder, texts: TextEmbedder, dataset: MaskedImageDataset, tmp_path: Path
) -> None:
    result = _trainer(encoder, texts, _settings(epochs=1)).fit(dataset, out=tmp_path / "p.pth")
    checkpoint = torch.load(tmp_path / "p.pth", weights_only=True)
    assert checkpoint["backbone"] == TINY_RANDOM and checkpoint["layers"] == [1, 2, 3, 4]
    assert (checkpoint["in_dim"], checkpoint["out_dim"]) == (encoder.width, encoder.embed_dim)
    loaded = load_projections(tmp_path / "p.pth", encoder)
    assert _same(dict(loaded.state_dict()), _weights(result))


def test_a_nan_loss_stops_training_and_keeps_the_previous_checkpoint(
    encoder: ClipEncoder,
    texts: TextEmbedder,
    dataset: MaskedImageDataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "good.pth"
    _trainer(encoder, texts, _settings(epochs=1)).fit(dataset, out=out)
    saved, saved_state = out.read_bytes(), training_state_path(out).read_bytes()

    real_loss = trainer_module.aprilgan_loss
    calls = {"n": 0}

    def diverging_loss(maps: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = real_loss(maps, target)
        return loss * float("nan") if calls["n"] >= 2 else loss

    monkeypatch.setattr(trainer_module, "aprilgan_loss", diverging_loss)
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at epoch 2 step 2 .*lower --lr.*good.pth was kept"):
        _trainer(encoder, texts, _settings(epochs=3)).fit(dataset, out=out, resume=out)
    assert out.read_bytes() == saved
    assert training_state_path(out).read_bytes() == saved_state
    assert not list(tmp_path.glob("*.tmp*"))


def test_resume_with_other_layers_is_refused(
    encoder: ClipEncoder, texts: TextEmbedder, dataset: MaskedImageDataset, tmp_path: Path
) -> None:
    _trainer(encoder, texts, _settings(epochs=1)).fit(dataset, out=tmp_path / "p.pth")
    other = ClipEncoder.from_name(TINY_RANDOM, layers=(2, 4))
    with pytest.raises(WeightsMismatchError, match="trained on backbone 'tiny-random' layers \\[1, 2, 3, 4\\]"):
        ProjectionTrainer(other, _settings()).fit(dataset, resume=tmp_path / "p.pth")


def test_resume_needs_the_training_state_beside_the_checkpoint(
    encoder: ClipEncoder, texts: TextEmbedder, dataset: MaskedImageDataset, tmp_path: Path
) -> None:
    plain = tmp_path / "plain.pth"
    save_projections(ProjectionTrainer(encoder, text_embedder=texts).new_projections(), encoder, plain)
    with pytest.raises(WeightsNotFoundError, match=r"no training state .*plain\.pth\.train-state\.pt"):
        _trainer(encoder, texts, _settings()).fit(dataset, resume=plain)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"batch_size": 0}, "batch size must be at least 1"),
        ({"learning_rate": float("nan")}, "learning rate must be a positive number"),
        ({"mosaic_rate": 2.0}, "mosaic rate must be in"),
    ],
)
def test_bad_settings_name_the_setting(setting: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingSettings(**setting)  # type: ignore[arg-type]
