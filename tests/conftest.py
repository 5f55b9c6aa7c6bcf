"""Shared test set-up: no network, no writes to the user's cache, real data located beside the repo."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

# The test models are tiny: one thread avoids thread start-up and contention costs (the suite ran
# 2-5x faster so on 2 cores), and makes float sums independent of the machine's core count.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "mvtec_ad"
BOTTLE = SHARED_DATA / "bottle"


@pytest.fixture(autouse=True)
def _offline_and_private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NORMADD_OFFLINE", "1")
    monkeypatch.setenv("NORMADD_CACHE_DIR", str(tmp_path_factory.mktemp("normadd-cache")))
    monkeypatch.delenv("NORMADD_WEIGHTS", raising=False)


@pytest.fixture(scope="session")
def bottle_dir() -> Path:
    if not BOTTLE.is_dir():
        pytest.fail(f"the real bottle data is missing at {BOTTLE}: clone the repo with ../shared beside it")
    return BOTTLE


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright launches Debian's chromium (skips without it; fails in CI)."""
    from helpers.browser import launch_args

    return launch_args(browser_type_launch_args)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster for the session (tests/helpers/postgres.py); skips without one, fails in CI."""
    from helpers.postgres import require_bin_dir, throwaway_cluster

    with throwaway_cluster(require_bin_dir()) as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: Any) -> Iterator[str]:
    """A fresh, empty database of the session's cluster, as a ``postgresql://`` URL; dropped afterwards."""
    name = postgres_cluster.create_database()
    yield postgres_cluster.url(name)
    postgres_cluster.drop_database(name)


@pytest.fixture(scope="session")
def postgres_schemas_database(postgres_cluster: Any) -> str:
    """One database of the session's cluster that holds a schema per test (see ``postgres_schema_url``)."""
    return str(postgres_cluster.create_database())


@pytest.fixture
def postgres_schema_url(postgres_cluster: Any, postgres_schemas_database: str) -> Iterator[str]:
    """A fresh, empty schema as a ``postgresql://`` URL whose connections see only it; dropped afterwards.

    As isolated as a fresh database for the registry (its tables, triggers and schema version live
    in the schema) at a fraction of the cost: CREATE DATABASE copies a template (0.4-0.5 s per test
    on the busy 2-core machine, against 0.2 s for a schema, both with the registry's migrations).
    """
    schema = postgres_cluster.create_schema(postgres_schemas_database)
    yield postgres_cluster.schema_url(postgres_schemas_database, schema)
    postgres_cluster.execute(f"DROP SCHEMA {schema} CASCADE", postgres_schemas_database)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's registry lives: an SQLite file, or a fresh schema on the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        return str(tmp_path / "registry.db")
    return str(request.getfixturevalue("postgres_schema_url"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with browser tests run last (each module's tests keep their order).

    pytest-playwright's session-wide Playwright keeps an asyncio event loop running in the main
    thread once started, and ``asyncio.run`` in any later test would then fail.
    """
    browser_modules = {item.path for item in items if "page" in getattr(item, "fixturenames", ())}
    items.sort(key=lambda item: item.path in browser_modules)
