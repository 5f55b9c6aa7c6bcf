"""Unit-test set-up: offline, a private cache per test, and small models built in code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from normadd.backbone import ClipEncoder

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "NORMADD_OFFLINE", "TRANSFORMERS_OFFLINE")
UNSET = (
    "NORMADD_WEIGHTS",
    "NORMADD_LLM_API_KEY",
    "OPENAI_API_KEY",
    "NORMADD_LLM_BASE_URL",
    "NORMADD_LLM_MODEL",
)


def _isolate(patch: pytest.MonkeyPatch, cache: Path) -> None:
    for flag in OFFLINE_FLAGS:
        patch.setenv(flag, "1")
    patch.setenv("NORMADD_CACHE_DIR", str(cache))
    for name in UNSET:
        patch.delenv(name, raising=False)


@pytest.fixture(scope="session", autouse=True)
def _offline_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Module and session fixtures are built before any per-test fixture: isolate them too."""
    with pytest.MonkeyPatch.context() as patch:
        _isolate(patch, tmp_path_factory.mktemp("normadd-session-cache"))
        yield


@pytest.fixture(autouse=True)
def _offline_private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test: no network, its own NORMADD_CACHE_DIR, no weights or LLM settings."""
    cache = tmp_path / "normadd-cache"
    _isolate(monkeypatch, cache)
    return cache


@pytest.fixture
def cache_root(_offline_private_cache: Path) -> Path:
    """The NORMADD_CACHE_DIR of the running test."""
    return _offline_private_cache


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's tiny models on one CPU thread, then restore the thread count.

    Ops on tiny tensors gain nothing from a second thread, and on a busy 2-core machine the
    thread hand-off costs more than the op (measured: text encoding 2.5 ms vs 230 ms per call).
    Opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``; it is not global because
    thread count changes float summation order, which other tests' tight tolerances may feel.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_encoder() -> ClipEncoder:
    """The random-init test backbone (80 px, 10 x 10 grid, width 64, embed_dim 32, layers 1-4).

    Shared by the session: tests must not change its weights (patch methods with monkeypatch only).
    """
    return ClipEncoder.from_name("tiny-random")
