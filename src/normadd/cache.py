"""Where normadd keeps what it computed once (text embeddings, LLM phrases) on disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE_ENV = "NORMADD_CACHE_DIR"


def cache_dir(kind: str) -> Path:
    """The folder for one kind of cached item (``$NORMADD_CACHE_DIR/<kind>``), created."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "normadd")
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cache_key(*parts: object) -> str:
    """A stable hex digest of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so readers never see half."""
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
