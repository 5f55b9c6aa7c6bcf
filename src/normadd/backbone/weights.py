"""Where a backbone's CLIP weights come from, resolved in one place.

Order: an explicit path (``--weights``; the word ``random`` asks for a seeded random
initialisation, for tests and speed measurements), then ``NORMADD_WEIGHTS``, then the open_clip
and Hugging Face caches, then a download through open_clip, only when the network is allowed
(``HF_HUB_OFFLINE``/``NORMADD_OFFLINE`` unset). Nothing found is one clear error naming all four.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from normadd.backbone.specs import BackboneSpec
from normadd.errors import WeightsNotFoundError

WEIGHTS_ENV = "NORMADD_WEIGHTS"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
RANDOM_WEIGHTS = "random"


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a backbone's weights were found.

    Attributes:
        path: The weights file, or None for a random initialisation.
        origin: How it was found ("argument", "environment", "cache", "download", "random").
    """

    path: Path | None
    origin: str

    @property
    def fingerprint(self) -> str:
        """A short id of these weights (path, size, mtime), used as a cache key."""
        if self.path is None:
            return "random-init"
        stat = self.path.stat()
        key = f"{self.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def offline_requested() -> bool:
    """Whether downloads are forbidden: ``NORMADD_OFFLINE``, ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set."""
    offline = ("HF_HUB_OFFLINE", "NORMADD_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(flag, "").strip() not in ("", "0") for flag in offline)


def network_allowed(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    """Whether normadd may try a download: no offline flag set and the hub answers quickly.

    The quick connection probe keeps an offline machine from waiting through the hub client's
    retries (about a minute) before the "no weights" message.
    """
    if offline_requested():
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _checked_file(path: Path, where: str) -> Path:
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} (from {where}) does not exist: fix the path")
    if path.stat().st_size == 0:
        raise WeightsNotFoundError(f"weights file {path} (from {where}) is empty: fetch it again")
    if path.suffix not in WEIGHT_SUFFIXES:
        allowed = ", ".join(WEIGHT_SUFFIXES)
        raise WeightsNotFoundError(f"weights file {path} (from {where}) is not an open_clip checkpoint ({allowed})")
    return path


def _cached_weights(spec: BackboneSpec) -> Path | None:
    """Look for the tag's weights in the Hugging Face and open_clip caches without any I/O."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.open_clip_name, spec.pretrained_tag or "")
    if not cfg:
        return None
    hub_id = cfg.get("hf_hub", "").rstrip("/")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        parts = hub_id.split("/")
        repo_id = "/".join(parts[:2])
        names = (parts[2],) if len(parts) > 2 else spec.hf_filenames
        for filename in names:
            found = try_to_load_from_cache(repo_id, filename)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = cfg.get("url", "")
    if url:
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if cached.is_file():
            return cached
    return None


def resolve_weights(
    spec: BackboneSpec, weights: str | Path | None = None, option: str = "--weights"
) -> ResolvedWeights:
    """Find the CLIP weights for ``spec``.

    Args:
        spec: The backbone.
        weights: An explicit open_clip checkpoint (.pt/.pth/.bin/.safetensors), ``random``, or None.
        option: The command-line flag that sets ``weights``, named in the error hints
            (``--detector-weights`` for a detector's own backbone).

    Returns:
        Where the weights are; ``path`` is None only for random-init test backbones.

    Raises:
        WeightsNotFoundError: Nothing was found (the message lists every option).
    """
    if weights is not None and str(weights) == RANDOM_WEIGHTS:
        return ResolvedWeights(None, "random")
    if weights is not None:
        return ResolvedWeights(_checked_file(Path(weights), option), "argument")
    from_env = os.environ.get(WEIGHTS_ENV, "").strip()
    if from_env:
        return ResolvedWeights(_checked_file(Path(from_env), WEIGHTS_ENV), "environment")
    if spec.random_init:
        return ResolvedWeights(None, "random")
    cached = _cached_weights(spec)
    if cached is not None:
        return ResolvedWeights(cached, "cache")
    if network_allowed() and spec.pretrained_tag:
        try:
            import open_clip

            cfg = open_clip.get_pretrained_cfg(spec.open_clip_name, spec.pretrained_tag)
            downloaded = open_clip.download_pretrained(cfg)
            if downloaded:
                return ResolvedWeights(Path(downloaded), "download")
        except Exception:
            pass
    raise WeightsNotFoundError(
        f"no weights for backbone '{spec.name}': pass {option} PATH (an open_clip "
        f".pt/.bin/.safetensors file), set {WEIGHTS_ENV}, put '{spec.open_clip_name}' "
        f"({spec.pretrained_tag}) in the open_clip/Hugging Face cache, or allow the network "
        f"for a download; {option} random runs it with random weights (for tests)"
    )
