"""Per-layer linear projections from raw patch tokens into CLIP's joint embedding space.

APRIL-GAN learns one ``nn.Linear(width, embed_dim)`` per tapped layer. They load from a normadd
checkpoint (which records backbone, layers and dimensions, checked at load), from the official
APRIL-GAN checkpoint (``{"trainable_linearlayer": {"fc.<i>.weight", "fc.<i>.bias"}}``) or from a
bare ``{"fc.<i>.weight", "fc.<i>.bias"}`` state dict. Without a checkpoint, a training-free
fallback projects every layer through CLIP's own ``ln_post`` + ``proj``.

Projections are resolved like weights (:func:`resolve_projections`): a path, or a name of APRIL-GAN's
published checkpoints (``aprilgan-visa``: ``visa_pretrained.pth``, trained on VisA, the one the paper
uses on MVTec AD; ``aprilgan-mvtec``: ``mvtec_pretrained.pth``) looked up in ``$NORMADD_PROJECTIONS``
(a folder) and the cache folder ``$NORMADD_CACHE_DIR/projections``, then downloaded into that cache
when downloads are allowed: from ``$NORMADD_PROJECTIONS_URL`` (a mirror, e.g. inside the plant) or
from the official APRIL-GAN repository's ``exps/pretrained`` folder, where its README says the
checkpoints are provided. No offline flag may be set, and without a mirror GitHub must answer a
3 s probe first, as for weights.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from normadd.backbone.clip_encoder import ClipEncoder
from normadd.cache import atomic_write_bytes, cache_dir
from normadd.errors import WeightsMismatchError, WeightsNotFoundError

FORMAT = "normadd-projections"
FORMAT_VERSION = 1
OFFICIAL_KEY = "trainable_linearlayer"
PROJECTIONS_ENV = "NORMADD_PROJECTIONS"
PROJECTIONS_URL_ENV = "NORMADD_PROJECTIONS_URL"
# The official repository provides its checkpoints in exps/pretrained (its README, "Pretrained Models").
APRIL_GAN_CHECKPOINTS_URL = "https://github.com/ByChelsea/VAND-APRIL-GAN/raw/master/exps/pretrained/"
DOWNLOAD_TIMEOUT_S = 120.0
_BARE_KEY = re.compile(r"^fc\.\d+\.(weight|bias)$")


@dataclass(frozen=True)
class NamedProjections:
    """A published projections checkpoint normadd knows by name.

    Attributes:
        filename: The file name APRIL-GAN publishes it under.
        backbone: The backbone it was trained for.
        about: What it was trained on, for users.
    """

    filename: str
    backbone: str
    about: str


NAMED_PROJECTIONS: dict[str, NamedProjections] = {
    "aprilgan-visa": NamedProjections("visa_pretrained.pth", "ViT-L-14-336", "APRIL-GAN, trained on VisA"),
    "aprilgan-mvtec": NamedProjections("mvtec_pretrained.pth", "ViT-L-14-336", "APRIL-GAN, trained on MVTec AD"),
}
# Used when no projections are given and the checkpoint resolves (the paper's choice for MVTec AD).
DEFAULT_PROJECTIONS = {"ViT-L-14-336": "aprilgan-visa"}


@dataclass(frozen=True)
class ResolvedProjections:
    """Where a projections checkpoint was found: its path and how ("argument", "environment", "cache")."""

    path: Path
    origin: str


def _named_locations(named: NamedProjections) -> list[Path]:
    folders = []
    from_env = os.environ.get(PROJECTIONS_ENV, "").strip()
    if from_env and Path(from_env).is_dir():
        folders.append(Path(from_env))
    folders.append(cache_dir("projections"))
    return [folder / named.filename for folder in folders]


def resolve_projections(projections: str | Path | None, backbone: str) -> ResolvedProjections | None:
    """Find the projections checkpoint a line asks for.

    Order: ``projections`` as a path or a name (:data:`NAMED_PROJECTIONS`); else ``$NORMADD_PROJECTIONS``
    when it is a file; else the backbone's default name when its file is in ``$NORMADD_PROJECTIONS``
    (a folder) or the cache; else None (the training-free fallback).

    Raises:
        WeightsNotFoundError: A name whose file is in none of the places (the message lists them).
    """
    if projections is not None and str(projections) in NAMED_PROJECTIONS:
        named = NAMED_PROJECTIONS[str(projections)]
        for candidate in _named_locations(named):
            if candidate.is_file():
                origin = "cache" if candidate.parent == cache_dir("projections") else "environment"
                return ResolvedProjections(candidate, origin)
        downloaded, why_not = _download(named)
        if downloaded is not None:
            return ResolvedProjections(downloaded, "download")
        places = " or ".join(str(p.parent) for p in _named_locations(named))
        raise WeightsNotFoundError(
            f"projections '{projections}' ({named.about}) not found: put APRIL-GAN's {named.filename} in {places} "
            f"(or a folder named by {PROJECTIONS_ENV}), or pass --projections PATH; not downloaded: {why_not}"
        )
    if projections is not None:
        return ResolvedProjections(Path(projections), "argument")
    from_env = os.environ.get(PROJECTIONS_ENV, "").strip()
    if from_env and Path(from_env).is_file():
        return ResolvedProjections(Path(from_env), "environment")
    default = DEFAULT_PROJECTIONS.get(backbone)
    if default is not None:
        for candidate in _named_locations(NAMED_PROJECTIONS[default]):
            if candidate.is_file():
                return ResolvedProjections(candidate, f"default {default}")
        downloaded, _ = _download(NAMED_PROJECTIONS[default])
        if downloaded is not None:
            return ResolvedProjections(downloaded, f"default {default}, download")
    return None


def _download(named: NamedProjections) -> tuple[Path | None, str]:
    """Fetch a named checkpoint into the cache when downloads are allowed: (path, "") or (None, why not).

    Raises:
        WeightsNotFoundError: The server answered with something that is not a torch checkpoint.
    """
    import urllib.error
    import urllib.request

    from normadd.backbone.weights import network_allowed, offline_requested

    if offline_requested():
        return None, "downloads are off (NORMADD_OFFLINE, HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)"
    mirror = os.environ.get(PROJECTIONS_URL_ENV, "").strip()
    if not mirror and not network_allowed("github.com"):
        return None, f"github.com did not answer (set {PROJECTIONS_URL_ENV} to a mirror)"
    url = (mirror.rstrip("/") + "/" if mirror else APRIL_GAN_CHECKPOINTS_URL) + named.filename
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as error:
        return None, f"{url} failed ({getattr(error, 'reason', error)})"
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # any unpickling failure means "not a checkpoint"
        raise WeightsNotFoundError(
            f"{url} did not give a torch checkpoint ({len(data)} bytes): check {PROJECTIONS_URL_ENV} or put "
            f"{named.filename} in {cache_dir('projections')} by hand"
        ) from None
    target = cache_dir("projections") / named.filename
    atomic_write_bytes(target, data)
    return target, ""


class LayerProjections(nn.Module):
    """Projects each tapped layer's tokens (B, N, width) to (B, N, embed_dim).

    Attributes:
        kind: "linear" (learned, APRIL-GAN) or "clip-head" (training-free ``ln_post`` + ``proj``).
        source: Where the weights came from, for users and output files.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_layers: int,
        kind: str = "linear",
        clip_head: tuple[nn.Module, Tensor] | None = None,
        source: str = "random init",
    ) -> None:
        super().__init__()
        self.kind = kind
        self.source = source
        self.in_dim, self.out_dim, self.num_layers = in_dim, out_dim, num_layers
        self.fc = nn.ModuleList(nn.Linear(in_dim, out_dim) for _ in range(num_layers if kind == "linear" else 0))
        self._clip_head = clip_head

    @classmethod
    def clip_head(cls, encoder: ClipEncoder) -> LayerProjections:
        """The training-free fallback: CLIP's ``ln_post`` and ``proj`` for every layer."""
        visual = encoder.model.visual
        return cls(
            encoder.width,
            encoder.embed_dim,
            len(encoder.spec.layers),
            kind="clip-head",
            clip_head=(visual.ln_post, visual.proj),
            source="training-free fallback (CLIP ln_post + proj; no trained projections given)",
        )

    def forward(self, tokens: list[Tensor]) -> list[Tensor]:
        """Project each layer's tokens with that layer's projection."""
        if len(tokens) != self.num_layers:
            raise WeightsMismatchError(
                f"projections are for {self.num_layers} layers but {len(tokens)} were tapped: "
                "tap the layers the projections were trained on"
            )
        if self._clip_head is not None:
            ln_post, proj = self._clip_head
            return [ln_post(t) @ proj for t in tokens]
        return [fc(t) for fc, t in zip(self.fc, tokens, strict=True)]

    @property
    def description(self) -> str:
        """One line naming the projections."""
        return f"{self.kind} projections ({self.source})"


def save_projections(projections: LayerProjections, encoder: ClipEncoder, path: str | Path) -> None:
    """Write a normadd projections checkpoint atomically (temporary file, then rename)."""
    if projections.kind != "linear":
        raise ValueError("only learned linear projections can be saved")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "backbone": encoder.spec.name,
        "open_clip_name": encoder.spec.open_clip_name,
        "layers": list(encoder.spec.layers),
        "in_dim": projections.in_dim,
        "out_dim": projections.out_dim,
        "state_dict": {k: v.detach().cpu() for k, v in projections.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsNotFoundError(f"projections file {path} does not exist: fix --projections")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsMismatchError(
            f"projections file {path} cannot be read ({type(error).__name__}): pass a normadd or "
            "APRIL-GAN projections checkpoint"
        ) from None
    if not isinstance(checkpoint, dict):
        raise WeightsMismatchError(f"projections file {path} holds no state dict: pass a projections checkpoint")
    return checkpoint


def load_projections(path: str | Path, encoder: ClipEncoder) -> LayerProjections:
    """Load projections for ``encoder``, checking backbone, layers and shapes.

    Accepts a normadd checkpoint, the official APRIL-GAN one, or a bare ``fc.<i>.weight/bias`` state dict.

    Raises:
        WeightsNotFoundError: The file does not exist.
        WeightsMismatchError: It is unreadable or made for another backbone or layers.
    """
    path = Path(path)
    checkpoint = _read(path)
    num_layers = len(encoder.spec.layers)
    if checkpoint.get("format") == FORMAT:
        if checkpoint.get("version") != FORMAT_VERSION:
            raise WeightsMismatchError(
                f"projections file {path} has format version {checkpoint.get('version')}, "
                f"this normadd reads {FORMAT_VERSION}: retrain or upgrade normadd"
            )
        if checkpoint["backbone"] != encoder.spec.name or tuple(checkpoint["layers"]) != encoder.spec.layers:
            raise WeightsMismatchError(
                f"projections file {path} was made for backbone '{checkpoint['backbone']}' layers "
                f"{checkpoint['layers']}, not '{encoder.spec.name}' layers {list(encoder.spec.layers)}: "
                "use the matching --backbone/--layers or retrain"
            )
        state_dict = checkpoint["state_dict"]
        source = f"normadd checkpoint {path}"
    elif OFFICIAL_KEY in checkpoint:
        state_dict = checkpoint[OFFICIAL_KEY]
        source = f"APRIL-GAN checkpoint {path}"
    elif checkpoint and all(isinstance(k, str) and _BARE_KEY.match(k) for k in checkpoint):
        state_dict = checkpoint  # a bare fc.<i>.weight/bias state dict (shapes are checked below)
        source = f"projections state dict {path}"
    else:
        raise WeightsMismatchError(
            f"projections file {path} is neither a normadd nor an APRIL-GAN checkpoint "
            f"(no '{OFFICIAL_KEY}' or 'format' key, nor only fc.<i>.weight/bias): pass a projections checkpoint"
        )
    projections = LayerProjections(encoder.width, encoder.embed_dim, num_layers, source=source)
    expected = {k: tuple(v.shape) for k, v in projections.state_dict().items()}
    found = {k: tuple(v.shape) if isinstance(v, Tensor) else () for k, v in state_dict.items()}
    if expected != found:
        in_found = (found.get("fc.0.weight") or (None, None))[-1]
        raise WeightsMismatchError(
            f"projections file {path} does not fit '{encoder.spec.name}': it has "
            f"{len([k for k in found if k.endswith('.weight')])} layers of input width {in_found}, the "
            f"backbone needs {num_layers} of {encoder.width} -> {encoder.embed_dim}: pass projections "
            "trained for this backbone"
        )
    projections.load_state_dict(state_dict)
    return projections.eval().requires_grad_(False).to(encoder.runtime.device)
