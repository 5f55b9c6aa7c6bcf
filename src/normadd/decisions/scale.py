"""The identity of a line's score scale: what a threshold is only valid for.

A threshold compares with the detector's own ("before") scores, so it belongs to everything that
changes them: the detector kind and its backbone, the weights and projections (by content), the
tapped layers, the class name its prompts name, few-shot references, memory bank or saved maps.
Added normalities, phrase generator, limits and the threshold itself are *not* part of it:
they change only the "after" side. The identity is built from the config and the files it names,
without loading a model (files are fingerprinted by size and a hash of their first and last MiB;
folders by their files' names and fingerprints), so checking a threshold is cheap.

Conservative by design: a setting that could change the scores (e.g. the CLIP backbone beside a
PatchCore detector, which also sets the map the scores are read from) is included.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from normadd.config import LineConfig

SCALE_KEYS = (
    "detector",
    "backbone",
    "weights",
    "projections",
    "layers",
    "class_name",
    "detector_backbone",
    "detector_weights",
    "shots",
    "reference",
    "memory_bank",
    "maps",
)
_FILE_KEYS = ("weights", "projections", "detector_weights", "memory_bank")
_FOLDER_KEYS = ("reference", "maps")
_CHUNK = 1 << 20
WEIGHTS_ENV = "NORMADD_WEIGHTS"


def file_fingerprint(path: str | Path) -> str:
    """``sha256:<16 hex>`` of a file's size, first and last MiB; ``missing:<path>`` when absent."""
    path = Path(path)
    if not path.is_file():
        return f"missing:{path}"
    stat = path.stat()
    return _fingerprint(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    """Cached per (path, size, mtime): a service checks its threshold on every request."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_CHUNK))
        if size > 2 * _CHUNK:
            handle.seek(size - _CHUNK)
            digest.update(handle.read(_CHUNK))
        elif size > _CHUNK:
            digest.update(handle.read())
    return f"sha256:{digest.hexdigest()[:16]}"


def folder_fingerprint(path: str | Path) -> str:
    """A fingerprint of a folder's files (relative names and their fingerprints), recursively."""
    path = Path(path)
    if not path.is_dir():
        return file_fingerprint(path) if path.is_file() else f"missing:{path}"
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path)}={file_fingerprint(item)}\n".encode())
    return f"sha256:{digest.hexdigest()[:16]}"


def score_scale(config: LineConfig) -> dict[str, str]:
    """The identity of the "before" scores ``config`` gives (see the module docstring).

    CLIP weights not named in the config are those of ``$NORMADD_WEIGHTS`` when set, else the
    backbone's default weights (named ``default``).
    """
    scale: dict[str, str] = {}
    for key in SCALE_KEYS:
        value = getattr(config, key, None)
        if key == "weights" and value is None:
            value = os.environ.get(WEIGHTS_ENV, "").strip() or None
            if value is None:
                scale[key] = "default"
                continue
        if value is None or value == "":
            continue
        if key in _FILE_KEYS and value != "random":
            scale[key] = file_fingerprint(value)
        elif key in _FOLDER_KEYS:
            scale[key] = folder_fingerprint(value)
        elif isinstance(value, list):
            scale[key] = ",".join(str(v) for v in value)
        else:
            scale[key] = str(value)
    return scale


def stale_reason(stored: dict[str, str] | None, current: dict[str, str]) -> str | None:
    """Why a threshold stored with scale ``stored`` cannot judge scores of scale ``current``.

    Returns:
        None when they match (or nothing was stored, e.g. a bare ``threshold:`` in a YAML file,
        which is taken to be meant for the config it is in); else one line naming what changed.
    """
    if stored is None:
        return None
    changed = sorted(key for key in set(stored) | set(current) if stored.get(key) != current.get(key))
    if not changed:
        return None
    described = ", ".join(f"{key} {stored.get(key, 'unset')} -> {current.get(key, 'unset')}" for key in changed[:3])
    more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
    return (
        f"the threshold was set for another detector score scale ({described}{more}): "
        "calibrate again (normadd calibrate) or set it again"
    )
