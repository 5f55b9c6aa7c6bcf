"""Training APRIL-GAN's per-layer linear projections on masked images, with CLIP frozen.

The recipe is APRIL-GAN's public ``train.py`` (read for facts, not copied): Adam with lr 1e-3
and betas (0.5, 0.999); per tapped layer, the zero-shot map of the projected tokens against the
class's ``[f_normal, f_abnormal]`` ensemble texts at the run size (``layer_map_reference``, the
formula of record); loss = focal + dice per layer (:mod:`normadd.training.losses`); a 2 x 2
mosaic of four images of one class with probability 0.2 (MVTec). Their runs: 3 epochs on MVTec
AD, 15 on VisA, batch 64 at 518 px, seed 111.

Reproducible on the CPU: the projections are initialised from the seed, and each epoch's order
and mosaics come from a generator seeded by (seed, epoch), so a run resumed after epoch k ends
with the same weights as one that never stopped. After each epoch the checkpoint (read by
:func:`~normadd.detectors.projections.load_projections`) and a training-state file beside it
(optimizer, epoch, losses) are written atomically; a NaN loss stops the run before anything is
written, so a good checkpoint is never replaced by a broken one.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from normadd.backbone.clip_encoder import ClipEncoder
from normadd.cache import atomic_write_bytes
from normadd.detectors.projections import LayerProjections, load_projections, save_projections
from normadd.detectors.segmentation import layer_map_reference
from normadd.errors import TrainingDivergedError, WeightsMismatchError, WeightsNotFoundError
from normadd.prompts.text_embedding import TextEmbedder
from normadd.training.dataset import MaskedImageDataset
from normadd.training.losses import aprilgan_loss

STATE_SUFFIX = ".train-state.pt"
STATE_FORMAT = "normadd-training-state"
STATE_VERSION = 1


@dataclass(frozen=True)
class TrainingSettings:
    """How to train (APRIL-GAN's values unless noted).

    Attributes:
        epochs: Total epochs (APRIL-GAN: 3 on MVTec AD, 15 on VisA).
        batch_size: Images per step (APRIL-GAN: 64 on a GPU; 8 suits a CPU).
        learning_rate: Adam learning rate.
        betas: Adam betas.
        seed: Seed of the initialisation, the order and the mosaics.
        mosaic_rate: Probability that a sample is replaced by a 2 x 2 mosaic of its class.
    """

    epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 111
    mosaic_rate: float = 0.2

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning rate must be a positive number, got {self.learning_rate}")
        if not 0.0 <= self.mosaic_rate <= 1.0:
            raise ValueError(f"mosaic rate must be in [0, 1], got {self.mosaic_rate}")


@dataclass(frozen=True)
class StepReport:
    """What one optimisation step reports (for progress bars)."""

    epoch: int
    step: int
    steps_per_epoch: int
    loss: float


@dataclass
class TrainingResult:
    """What a run produced.

    Attributes:
        projections: The trained projections.
        epoch_losses: Mean loss of every epoch trained so far (resumed runs include the earlier ones).
        step_losses: Loss of every step of this run.
        start_epoch: The epoch this run started at (0, or the resumed one).
        checkpoint: The checkpoint written, if any.
    """

    projections: LayerProjections
    epoch_losses: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    start_epoch: int = 0
    checkpoint: Path | None = None


def training_state_path(checkpoint: str | Path) -> Path:
    """The training-state file kept beside a checkpoint (``<checkpoint>.train-state.pt``)."""
    checkpoint = Path(checkpoint)
    if checkpoint.name.endswith(STATE_SUFFIX):
        return checkpoint
    return checkpoint.with_name(checkpoint.name + STATE_SUFFIX)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class ProjectionTrainer:
    """Learns one linear projection per tapped layer of a frozen CLIP encoder.

    Args:
        encoder: The CLIP encoder (frozen; its tapped layers get one projection each).
        settings: Hyper-parameters; APRIL-GAN's when None.
        text_embedder: Shared text embedder (and cache); a new one when None.
    """

    def __init__(
        self,
        encoder: ClipEncoder,
        settings: TrainingSettings | None = None,
        text_embedder: TextEmbedder | None = None,
    ) -> None:
        self.encoder = encoder
        self.settings = settings or TrainingSettings()
        self.text_embedder = text_embedder or TextEmbedder(encoder)

    def new_projections(self) -> LayerProjections:
        """Projections initialised from the seed (PyTorch's default ``nn.Linear`` init)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.settings.seed)
            projections = LayerProjections(
                self.encoder.width, self.encoder.embed_dim, len(self.encoder.spec.layers), source="trained by normadd"
            )
        return projections.to(self.encoder.runtime.device)

    def _texts(self, class_names: list[str]) -> tuple[Tensor, Tensor]:
        # clone(): embeddings may be inference tensors, which autograd cannot save for backward.
        device = self.encoder.runtime.device
        normal = torch.stack([self.text_embedder.normal(name) for name in class_names]).clone().to(device)
        abnormal = torch.stack([self.text_embedder.abnormal(name) for name in class_names]).clone().to(device)
        return normal, abnormal

    def layer_maps(
        self, projections: LayerProjections, images: Tensor, labels: Tensor, texts: tuple[Tensor, Tensor]
    ) -> list[Tensor]:
        """Per-layer abnormal probability maps (B, S, S) of a batch, differentiable in the projections."""
        features = self.encoder.encode_images(self.encoder.preprocess(images))
        tokens = [t.clone() for t in features.patch_tokens]  # leave inference mode: autograd reads them
        normal, abnormal = texts
        maps = []
        with self.encoder.runtime.autocast():
            projected = projections(tokens)
        for layer_tokens in projected:
            per_image = [
                layer_map_reference(
                    layer_tokens[i : i + 1].float(),
                    normal[c],
                    abnormal[c],
                    features.grid_size,
                    self.encoder.image_size,
                )
                for i, c in enumerate(labels.tolist())
            ]
            maps.append(torch.cat(per_image))
        return maps

    def _plan(self, dataset: MaskedImageDataset, epoch: int) -> list[list[list[int]]]:
        """The epoch's batches as sample indices: a seeded order, each sample a mosaic with ``mosaic_rate``.

        Only indices are planned here; each batch's images are loaded when its step comes.
        """
        generator = _epoch_generator(self.settings.seed, epoch)
        order = torch.randperm(len(dataset), generator=generator).tolist()
        by_class: dict[int, list[int]] = {}
        for index in range(len(dataset)):
            by_class.setdefault(dataset.class_index(index), []).append(index)
        plan: list[list[int]] = []
        for index in order:
            if float(torch.rand((), generator=generator)) < self.settings.mosaic_rate:
                same_class = by_class[dataset.class_index(index)]
                others = torch.randint(len(same_class), (3,), generator=generator).tolist()
                plan.append([index] + [same_class[o] for o in others])
            else:
                plan.append([index])
        size = self.settings.batch_size
        return [plan[start : start + size] for start in range(0, len(plan), size)]

    @staticmethod
    def _load(dataset: MaskedImageDataset, items: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
        loaded = [dataset.mosaic(item) if len(item) == 4 else dataset[item[0]] for item in items]
        images = torch.stack([image for image, _, _ in loaded])
        masks = torch.stack([mask for _, mask, _ in loaded])
        labels = torch.tensor([label for _, _, label in loaded])
        return images, masks, labels

    @torch.no_grad()
    def evaluate(self, projections: LayerProjections, dataset: MaskedImageDataset) -> float:
        """Mean loss of ``projections`` over ``dataset`` (no mosaics, no updates)."""
        texts = self._texts(dataset.prompt_objects)
        device = self.encoder.runtime.device
        losses, counts = [], []
        for start in range(0, len(dataset), self.settings.batch_size):
            items = [[i] for i in range(start, min(start + self.settings.batch_size, len(dataset)))]
            images, masks, labels = self._load(dataset, items)
            maps = self.layer_maps(projections, images, labels, texts)
            losses.append(float(aprilgan_loss(maps, masks.to(device))) * len(items))
            counts.append(len(items))
        return sum(losses) / sum(counts)

    def fit(
        self,
        dataset: MaskedImageDataset,
        out: str | Path | None = None,
        resume: str | Path | None = None,
        on_step: Callable[[StepReport], None] | None = None,
    ) -> TrainingResult:
        """Train the projections, writing the checkpoint after every epoch when ``out`` is given.

        Args:
            dataset: Images with masks.
            out: Checkpoint path (the training state goes beside it); nothing is written when None.
            resume: A checkpoint (or its state file) from an earlier run of this trainer: training
                continues after its last completed epoch up to ``settings.epochs``.
            on_step: Called after every step with the loss.

        Raises:
            TrainingDivergedError: The loss became NaN or infinite (nothing is written).
            WeightsMismatchError: ``resume`` was made for another backbone or layers.
        """
        settings = self.settings
        projections = self.new_projections().train().requires_grad_(True)
        optimizer = torch.optim.Adam(projections.parameters(), lr=settings.learning_rate, betas=settings.betas)
        result = TrainingResult(projections=projections)
        if resume is not None:
            state = self._read_state(resume)
            projections.load_state_dict(state["projections"])
            optimizer.load_state_dict(state["optimizer"])
            for group in optimizer.param_groups:  # the lr of this run wins over the saved one
                group["lr"] = settings.learning_rate
            result.start_epoch = int(state["epoch"])
            result.epoch_losses = list(state["epoch_losses"])
        texts = self._texts(dataset.prompt_objects)
        device = self.encoder.runtime.device
        for epoch in range(result.start_epoch, settings.epochs):
            batches = self._plan(dataset, epoch)
            epoch_losses = []
            for step, batch in enumerate(batches):
                images, masks, labels = self._load(dataset, batch)
                maps = self.layer_maps(projections, images, labels, texts)
                loss = aprilgan_loss(maps, masks.to(device))
                value = float(loss.detach())
                if not math.isfinite(value):
                    kept = f"; the last good checkpoint {out} was kept" if out and Path(out).is_file() else ""
                    raise TrainingDivergedError(
                        f"training diverged: the loss is {value} at epoch {epoch + 1} step {step + 1} "
                        f"(lr {settings.learning_rate:g}): lower --lr or check the images and masks{kept}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                epoch_losses.append(value)
                if on_step is not None:
                    on_step(StepReport(epoch, step, len(batches), value))
            if not _all_finite(projections):
                raise TrainingDivergedError(
                    f"training diverged: the projections hold NaN/inf after epoch {epoch + 1} "
                    f"(lr {settings.learning_rate:g}): lower --lr; nothing was written"
                )
            result.step_losses += epoch_losses
            result.epoch_losses.append(sum(epoch_losses) / len(epoch_losses))
            if out is not None:
                self._write(projections, optimizer, epoch + 1, result.epoch_losses, Path(out))
                result.checkpoint = Path(out)
        projections.eval().requires_grad_(False)
        return result

    def _write(
        self,
        projections: LayerProjections,
        optimizer: torch.optim.Optimizer,
        epoch: int,
        losses: list[float],
        out: Path,
    ) -> None:
        """Training state first, then the checkpoint, each atomically (temporary file + rename)."""
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "backbone": self.encoder.spec.name,
            "layers": list(self.encoder.spec.layers),
            "epoch": epoch,
            "epoch_losses": list(losses),
            "settings": asdict(self.settings),
            "projections": {k: v.detach().cpu() for k, v in projections.state_dict().items()},
            "optimizer": optimizer.state_dict(),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(training_state_path(out), buffer.getvalue())
        save_projections(projections, self.encoder, out)

    def _read_state(self, resume: str | Path) -> dict[str, Any]:
        path = training_state_path(resume)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"no training state {path} beside {resume}: --resume needs a checkpoint written by "
                "normadd train-projections (its .train-state.pt file must sit next to it)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise WeightsMismatchError(f"training state {path} cannot be read ({type(error).__name__})") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise WeightsMismatchError(f"{path} is not a normadd training state: pass the checkpoint to --resume")
        if state.get("version") != STATE_VERSION:
            raise WeightsMismatchError(
                f"training state {path} has version {state.get('version')}, this normadd reads {STATE_VERSION}"
            )
        if state["backbone"] != self.encoder.spec.name or tuple(state["layers"]) != self.encoder.spec.layers:
            raise WeightsMismatchError(
                f"checkpoint {resume} was trained on backbone '{state['backbone']}' layers {state['layers']}, "
                f"not '{self.encoder.spec.name}' layers {list(self.encoder.spec.layers)}: resume with the same "
                "--backbone or start a new run"
            )
        checkpoint = Path(resume) if not Path(resume).name.endswith(STATE_SUFFIX) else None
        if checkpoint is not None and checkpoint.is_file():
            load_projections(checkpoint, self.encoder)  # the same checks inspect will make
        return state
