"""PatchCore (Roth et al., CVPR 2022): a memory bank of normal patch features, nearest-neighbour maps.

Features: a torchvision ResNet (WideResNet-50 in the paper) up to ``layer3``; ``layer2`` and ``layer3``
are each 3x3 average-pooled (the locally aware patch features), ``layer3`` is upsampled bilinearly to
``layer2``'s grid and the two are concatenated. Fit: all patch features of the normal images, reduced
by greedy k-center coreset selection on a sparse random projection (10 % by default, seeded;
:mod:`normadd.detectors.coreset`, exact by default or ``coreset="fast"``).
Detect: each patch's distance to its nearest memory feature (faiss when installed, else torch), the
map upsampled (nearest) to the input size and blurred with a Gaussian of sigma 4; the paper's image
score reweights the largest patch distance by how isolated its nearest memory feature is (eq. 7).
The formulas are facts read from the paper and anomalib 2.7's ``PatchcoreModel``; our fixtures check
the maps against it.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from torch import Tensor, nn

from normadd.cache import atomic_write_bytes
from normadd.detectors.base import DetectionResult, max_scores
from normadd.detectors.coreset import (  # noqa: F401 (re-exported: PatchCore's coreset parts)
    check_coreset_method,
    greedy_coreset,
    johnson_lindenstrauss_dim,
    sparse_random_projection,
)
from normadd.errors import MemoryBankMismatchError, WeightsMismatchError, WeightsNotFoundError
from normadd.progress import NoProgress, ProgressHook
from normadd.runtime import Runtime, resolve_runtime

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CNN_BACKBONES: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "wide_resnet50_2": torchvision.models.wide_resnet50_2,
    "resnet18": torchvision.models.resnet18,  # small, for tests
}
DEFAULT_CNN = "wide_resnet50_2"
DEFAULT_LAYERS = ("layer2", "layer3")
BANK_FORMAT = "normadd-patchcore-memory-bank"
BANK_VERSION = 1
NN_CHUNK = 4096
IMAGE_SCORES = ("max", "native")
RANDOM = "random"


def euclidean_distances(queries: Tensor, bank: Tensor) -> Tensor:
    """Pairwise Euclidean distances (n, d) x (m, d) -> (n, m), by the expanded square."""
    squared = (queries * queries).sum(1, keepdim=True) - 2 * queries @ bank.T + (bank * bank).sum(1).unsqueeze(0)
    return squared.clamp_min_(0).sqrt_()


def _faiss() -> Any | None:
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        return None
    return faiss


def nearest_neighbours(queries: Tensor, bank: Tensor, k: int = 1, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Distances and indices of the ``k`` nearest bank rows of every query: (n, k) each.

    Args:
        queries: (n, d) features.
        bank: (m, d) memory bank.
        k: Neighbours per query (at most m).
        backend: "faiss" (exact L2 index), "torch" (chunked expanded-square distances) or "auto"
            (faiss when it is installed and the tensors are on the CPU).

    Raises:
        ValueError: An unknown backend, or "faiss" when faiss is not installed.
    """
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"nearest-neighbour backend '{backend}' is unknown: use auto, faiss or torch")
    k = min(k, bank.shape[0])
    faiss = _faiss() if backend != "torch" else None
    if backend == "faiss" and faiss is None:
        raise ValueError("faiss is not installed: pip install faiss-cpu, or use backend='torch'")
    if faiss is not None and (backend == "faiss" or queries.device.type == "cpu"):
        index = faiss.IndexFlatL2(bank.shape[1])
        index.add(bank.detach().float().cpu().contiguous().numpy())
        _, found = index.search(queries.detach().float().cpu().contiguous().numpy(), k)
        indices = torch.from_numpy(found).long().to(queries.device)
        # faiss's float32 squared distances lose precision on large-norm features: measure the k found directly.
        return (queries.unsqueeze(1) - bank[indices]).norm(dim=-1), indices
    chunk_distances: list[Tensor] = []
    chunk_indices: list[Tensor] = []
    for start in range(0, queries.shape[0], NN_CHUNK):
        chunk = queries[start : start + NN_CHUNK]
        nearest = euclidean_distances(chunk, bank).topk(k, dim=1, largest=False).indices
        # The expanded square cancels badly in float32 (~1e-3 on PatchCore's large-norm features): it only
        # ranks; the distances of the k found are measured directly.
        chunk_distances.append((chunk.unsqueeze(1) - bank[nearest]).norm(dim=-1))
        chunk_indices.append(nearest)
    return torch.cat(chunk_distances), torch.cat(chunk_indices)


def reweighted_image_scores(
    patch_scores: Tensor,
    nn_indices: Tensor,
    embeddings: Tensor,
    bank: Tensor,
    num_neighbors: int = 9,
    backend: str = "auto",
) -> Tensor:
    """PatchCore's image score (paper eq. 7): the largest patch distance, reweighted.

    ``s = (1 - softmax(||m_test - m*||, ||m_test - n||_{n in N_b(m*)})[0]) * s*``: the score counts
    less when the matched memory feature ``m*`` lies in a dense region of the memory.

    Args:
        patch_scores: (B, P) nearest-neighbour distance of every patch.
        nn_indices: (B, P) index of that nearest memory feature.
        embeddings: (B, P, D) patch features.
        bank: (M, D) memory bank.
        num_neighbors: Size ``b`` of the neighbourhood ``N_b(m*)`` (1 = no reweighting).
        backend: Nearest-neighbour backend (see :func:`nearest_neighbours`).
    """
    batch = torch.arange(patch_scores.shape[0])
    worst = patch_scores.argmax(dim=1)
    score = patch_scores[batch, worst]
    if num_neighbors == 1:
        return score
    worst_features = embeddings[batch, worst]  # m_test,* in the paper
    matched = bank[nn_indices[batch, worst]]  # m*
    _, support = nearest_neighbours(matched, bank, num_neighbors, backend)  # N_b(m*), m* itself first
    distances = (worst_features.unsqueeze(1) - bank[support]).norm(dim=-1)  # (B, b)
    weights = 1.0 - torch.softmax(distances, dim=1)[:, 0]
    return weights * score


def gaussian_blur(maps: Tensor, sigma: float = 4.0) -> Tensor:
    """Blur (B, H, W) maps with a normalised Gaussian, kernel ``2 * int(4 sigma + 0.5) + 1``, reflect padding."""
    size = 2 * int(4.0 * sigma + 0.5) + 1
    x = torch.arange(size, dtype=torch.float32, device=maps.device) - size // 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    pad = size // 2
    out = F.pad(maps.unsqueeze(1), (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, size))
    out = F.conv2d(out, kernel.view(1, 1, size, 1))
    return out[:, 0]


class ResNetFeatures(nn.Module):
    """A torchvision ResNet run up to the last requested layer, returning the requested layers.

    Sub-modules keep torchvision's names (``conv1``, ``bn1``, ``layer1`` …), so its state_dict
    keys are torchvision's (and timm's) for the layers it keeps.
    """

    def __init__(self, resnet: torchvision.models.ResNet, layers: tuple[str, ...]) -> None:
        super().__init__()
        order = ("layer1", "layer2", "layer3", "layer4")
        unknown = [layer for layer in layers if layer not in order]
        if unknown:
            raise ValueError(f"unknown layers {unknown}: choose from {', '.join(order)}")
        self.layers = layers
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.block_names = order[: max(order.index(layer) for layer in layers) + 1]
        for name in self.block_names:
            self.add_module(name, getattr(resnet, name))

    def forward(self, pixels: Tensor) -> dict[str, Tensor]:
        """Feature maps of the requested layers for normalised pixels."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(pixels))))
        found = {}
        for name in self.block_names:
            x = getattr(self, name)(x)
            if name in self.layers:
                found[name] = x
        return found


def build_resnet(backbone: str, weights: str | Path | None = None, seed: int = 0) -> torchvision.models.ResNet:
    """A torchvision ResNet: user weights (a state_dict file) or a seeded random initialisation.

    Raises:
        WeightsNotFoundError: The weights file does not exist.
        WeightsMismatchError: It is unreadable or does not fit the backbone.
    """
    if backbone not in CNN_BACKBONES:
        raise ValueError(f"unknown PatchCore backbone '{backbone}': choose one of {', '.join(CNN_BACKBONES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CNN_BACKBONES[backbone](weights=None)
    if weights is None:
        return model.eval()
    path = Path(weights)
    if not path.is_file():
        raise WeightsNotFoundError(f"backbone weights {path} do not exist: fix --detector-weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsMismatchError(
            f"backbone weights {path} cannot be read ({type(error).__name__}): pass a torchvision {backbone} state_dict"
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, _ = model.load_state_dict(state, strict=False)
    needed = [key for key in missing if not key.startswith(("fc.", "layer4."))]
    if needed:
        raise WeightsMismatchError(
            f"backbone weights {path} do not fit {backbone} ({len(needed)} tensors missing, e.g. {needed[0]}): "
            f"pass a torchvision {backbone} state_dict"
        )
    return model.eval()


def resolve_cnn_weights(backbone: str, weights: str | Path | None) -> Path | None:
    """Where the backbone's weights come from: a path, ``"random"`` (None: random init) or torch's hub cache.

    Raises:
        WeightsNotFoundError: Nothing given and no ``<backbone>-*.pth`` in torch's hub cache.
    """
    if weights is not None and str(weights) == RANDOM:
        return None
    if weights is not None:
        return Path(weights)
    cached = sorted((Path(torch.hub.get_dir()) / "checkpoints").glob(f"{backbone}-*.pth"))
    if cached:
        return cached[0]
    raise WeightsNotFoundError(
        f"no weights for PatchCore backbone '{backbone}': pass --detector-weights PATH (a torchvision state_dict, "
        f"e.g. {backbone}-*.pth), put it in torch's hub cache ({torch.hub.get_dir()}/checkpoints), or pass "
        f"--detector-weights {RANDOM} for a random backbone (tests; maps are not meaningful)"
    )


@dataclass(frozen=True)
class MemoryBankSettings:
    """What a memory bank depends on; checked when a bank is loaded.

    Attributes:
        backbone: torchvision backbone name.
        layers: Feature layers.
        input_size: Side of the square input.
        coreset_ratio: Fraction of patch features kept.
        weights: Fingerprint of the backbone weights (first convolution), so a bank built on other
            weights is refused too.
    """

    backbone: str
    layers: tuple[str, ...]
    input_size: int
    coreset_ratio: float
    weights: str


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of the backbone's first convolution weights."""
    tensor = next(model.parameters()).detach().cpu().float().contiguous()
    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()[:16]


class PatchCoreDetector:
    """PatchCore on a torchvision ResNet; ``fit`` on normal images or ``load`` a saved memory bank.

    Args:
        backbone: torchvision backbone name ("wide_resnet50_2", or "resnet18" for tests).
        weights: A torchvision state_dict file for the backbone; a seeded random initialisation when None.
        input_size: Side of the square input (256).
        layers: Feature layers ("layer2", "layer3").
        coreset_ratio: Fraction of patch features kept in the memory bank.
        num_neighbors: Neighbourhood size of the image-score reweighting.
        seed: Seed of the random initialisation and the coreset.
        image_score: "max" (max of the map, the NAND protocol) or "native" (the paper's reweighted score).
        search: Nearest-neighbour backend: "auto" (faiss when installed), "faiss" or "torch".
        runtime: Device and precision; CPU fp32 when None.
        coreset: Coreset selection when fitting: "exact" (anomalib's picks) or "fast" (see
            :mod:`normadd.detectors.coreset`).
    """

    def __init__(
        self,
        backbone: str = DEFAULT_CNN,
        weights: str | Path | None = None,
        input_size: int = 256,
        layers: tuple[str, ...] = DEFAULT_LAYERS,
        coreset_ratio: float = 0.1,
        num_neighbors: int = 9,
        seed: int = 0,
        image_score: str = "max",
        search: str = "auto",
        runtime: Runtime | None = None,
        coreset: str = "exact",
    ) -> None:
        if image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score '{image_score}' is unknown: use {' or '.join(IMAGE_SCORES)}")
        if not 0.0 < coreset_ratio <= 1.0:
            raise ValueError(f"coreset ratio must be in (0, 1], got {coreset_ratio}")
        self.runtime = runtime or resolve_runtime("cpu", "fp32")
        self.backbone = backbone
        self.weights_path = Path(weights) if weights is not None else None
        self.layers = tuple(layers)
        self.num_neighbors = num_neighbors
        self.seed = seed
        self.image_score = image_score
        self.search = search
        self.coreset = check_coreset_method(coreset)
        resnet = build_resnet(backbone, weights, seed)
        self.features = ResNetFeatures(resnet, self.layers).eval().requires_grad_(False).to(self.runtime.device)
        self.settings = MemoryBankSettings(
            backbone, self.layers, input_size, coreset_ratio, weights_fingerprint(resnet)
        )
        self.memory_bank: Tensor | None = None
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.runtime.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.runtime.device).view(1, 3, 1, 1)

    @property
    def input_size(self) -> int:
        """Side of the square input."""
        return self.settings.input_size

    @property
    def description(self) -> str:
        """Detector, backbone, weights and memory bank in one line."""
        weights = str(self.weights_path) if self.weights_path else f"RANDOM weights, seed {self.seed}"
        bank = f"{self.memory_bank.shape[0]} memory features" if self.memory_bank is not None else "not fitted"
        return f"PatchCore on {self.backbone} {'+'.join(self.layers)} ({weights}), {bank}"

    @torch.inference_mode()
    def embed(self, images: Tensor) -> Tensor:
        """Locally aware patch features of RGB images in [0, 1]: (B, D, h, w), always in fp32.

        PatchCore stays out of bf16 autocast whatever the runtime: nearest-neighbour distances
        and the greedy coreset amplify the feature rounding (measured on bottle, random WRN-50:
        bf16 features moved the maps by up to 1.2 of a 37 range with the same memory bank, and
        by 19 with a bank fitted under bf16; ``benchmarks/bench_inspect.py --precision-only
        --detectors patchcore``).
        """
        images = images.to(self.runtime.device, torch.float32)
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size,) * 2, mode="bilinear", antialias=True).clamp(0, 1)
        maps = self.features((images - self._mean) / self._std)
        pooled = [F.avg_pool2d(maps[layer].float(), 3, stride=1, padding=1) for layer in self.layers]
        size = pooled[0].shape[-2:]
        resized = [pooled[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled[1:]]
        return torch.cat(resized, dim=1)

    def fit(self, batches: Iterable[Tensor], progress: ProgressHook | None = None) -> PatchCoreDetector:
        """Build the memory bank from batches of normal RGB images in [0, 1] (B, 3, H, W).

        Args:
            batches: Normal images; a sized collection lets ``progress`` show a total.
            progress: Told about the two stages, "features" (images) and "coreset" (selected rows).

        Raises:
            ValueError: No images were given.
        """
        progress = progress or NoProgress()
        if isinstance(batches, Sized):
            progress.start("PatchCore fit: features", sum(len(b) for b in batches))  # type: ignore[attr-defined]
        else:
            progress.start("PatchCore fit: features", 0)
        collected = []
        for images in batches:
            embedding = self.embed(images)
            collected.append(embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1]).cpu())
            progress.advance(len(images))
        if not collected:
            raise ValueError("PatchCore needs at least one normal image to fit")
        features = torch.cat(collected)
        indices = greedy_coreset(
            features.to(self.runtime.device),
            self.settings.coreset_ratio,
            self.seed,
            method=self.coreset,
            progress=progress,
        )
        self.memory_bank = features[indices].to(self.runtime.device)
        return self

    def set_memory_bank(self, memory_bank: Tensor) -> None:
        """Use a ready memory bank (M, D), e.g. one copied from another implementation."""
        self.memory_bank = memory_bank.float().to(self.runtime.device)

    def save(self, path: str | Path) -> None:
        """Write the memory bank with its settings (atomically).

        Raises:
            ValueError: Nothing fitted yet.
        """
        if self.memory_bank is None:
            raise ValueError("the memory bank is empty: fit PatchCore on normal images first")
        payload: dict[str, Any] = {
            "format": BANK_FORMAT,
            "version": BANK_VERSION,
            "settings": {**self.settings.__dict__, "layers": list(self.settings.layers)},
            "memory_bank": self.memory_bank.cpu(),
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())

    def load(self, path: str | Path) -> PatchCoreDetector:
        """Read a memory bank, refusing one built with other settings.

        Raises:
            MemoryBankMismatchError: Missing, unreadable, or built with another backbone, layers,
                input size, coreset ratio or backbone weights (the message names the difference).
        """
        path = Path(path)
        if not path.is_file():
            raise MemoryBankMismatchError(f"memory bank {path} does not exist: fit one with --reference DIR first")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise MemoryBankMismatchError(
                f"memory bank {path} cannot be read ({type(error).__name__}): refit it with --reference DIR"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != BANK_FORMAT:
            raise MemoryBankMismatchError(
                f"{path} is not a normadd PatchCore memory bank: refit it with --reference DIR"
            )
        if payload.get("version") != BANK_VERSION:
            raise MemoryBankMismatchError(
                f"memory bank {path} has format version {payload.get('version')}, this normadd reads {BANK_VERSION}: "
                "refit it with --reference DIR"
            )
        saved = payload["settings"]
        saved = MemoryBankSettings(**{**saved, "layers": tuple(saved["layers"])})
        differences = [
            f"{name} {getattr(saved, name)!r} (now {getattr(self.settings, name)!r})"
            for name in MemoryBankSettings.__dataclass_fields__
            if getattr(saved, name) != getattr(self.settings, name)
        ]
        if differences:
            raise MemoryBankMismatchError(
                f"memory bank {path} was built with {', '.join(differences)}: use the settings it was built with "
                "or refit it with --reference DIR"
            )
        self.set_memory_bank(payload["memory_bank"])
        return self

    @torch.inference_mode()
    def predict(self, images: Tensor) -> DetectionResult:
        """Maps (B, S, S) and the paper's reweighted image scores for RGB images in [0, 1].

        Raises:
            ValueError: Nothing fitted or loaded yet.
        """
        if self.memory_bank is None:
            raise ValueError("the memory bank is empty: fit PatchCore on normal images or load a memory bank")
        embedding = self.embed(images)
        batch, dims, rows, cols = embedding.shape
        patches = embedding.permute(0, 2, 3, 1).reshape(-1, dims)
        distances, indices = nearest_neighbours(patches, self.memory_bank, 1, self.search)
        patch_scores = distances[:, 0].reshape(batch, rows * cols)
        nn_indices = indices[:, 0].reshape(batch, rows * cols)
        scores = reweighted_image_scores(
            patch_scores,
            nn_indices,
            patches.reshape(batch, rows * cols, dims),
            self.memory_bank,
            self.num_neighbors,
            self.search,
        )
        maps = F.interpolate(patch_scores.reshape(batch, 1, rows, cols), size=(self.input_size,) * 2, mode="nearest")
        return DetectionResult(maps=gaussian_blur(maps[:, 0]), scores=scores)

    def detect(self, images: Tensor) -> DetectionResult:
        """Anomaly maps (B, S, S) and image scores (max of the map, or the paper's with ``image_score="native"``)."""
        prediction = self.predict(images)
        if self.image_score == "native":
            return prediction
        return DetectionResult(maps=prediction.maps, scores=max_scores(prediction.maps))
