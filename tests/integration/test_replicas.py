"""Several replicas, one truth: two real ``normadd serve`` processes on one registry.

Replica A and replica B serve the same line from one registry (one SQLite file, or one
PostgreSQL database). The bound under test (docs/how-to/replicas.md): each forward pass reads the
line's revision before it runs, so an inspection sent to any replica after a change's 201 has
been answered is scored with that change. No sleeps stand in for the bound: the inspection
through B follows the add through A at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import live_service
from helpers.live_service import ServeProcess
from normadd.config import LineConfig
from normadd.registry.line_model import create_line
from normadd.registry.store import Registry

LINE = "bottle"
KEY_A = "station-a-secret"  # replica A is called with this key, B with KEY_B: the audit's `who` tells them apart
KEY_B = "station-b-secret"
SCOPES = "inspect+change+audit+approve"  # each approves the other's proposals on the approval line
TIMEOUT = httpx.Timeout(60.0)


@dataclass
class Replicas:
    """Two replicas of one line on one registry."""

    backend: str
    database: str
    a: ServeProcess
    b: ServeProcess


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The registry both replicas share: an SQLite file, or a fresh database of the session's PostgreSQL."""
    if request.param == "sqlite":
        yield str(tmp_path_factory.mktemp("replicas-sqlite") / "normadd.db")
        return
    cluster = request.getfixturevalue("postgres_cluster")  # tests/conftest.py: skips without PostgreSQL, fails in CI
    name = cluster.create_database()
    try:
        yield cluster.url(name)
    finally:
        cluster.drop_database(name)


@pytest.fixture(scope="module")
def replicas(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    backend = "postgresql" if database.startswith("postgresql://") else "sqlite"
    folder = tmp_path_factory.mktemp(f"replicas-{backend}")
    config = folder / "line.yaml"
    config.write_text(
        f"class_name: bottle\nbackbone: tiny-random\ndatabase: '{database}'\n"
        "service:\n  line: bottle\n  batch_wait_ms: 5\n  device: cpu\n"
    )
    env = {
        "NORMADD_API_KEYS": f"station-a:{SCOPES}={KEY_A},station-b:{SCOPES}={KEY_B}",
        "NORMADD_CACHE_DIR": str(folder / "cache"),
        "HF_HUB_OFFLINE": "1",
        "NORMADD_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # two processes on a 2-core machine
    }
    # both start at once on a registry without the line: one creates it, the other uses it
    a = live_service.start(config, folder / "a.log", env)
    b = live_service.start(config, folder / "b.log", env)
    try:
        live_service.wait_healthy(a)
        live_service.wait_healthy(b)
        yield Replicas(backend, database, a, b)
    except RuntimeError as error:
        pytest.fail(str(error))
    finally:
        live_service.stop(a)
        live_service.stop(b)


def _client(server: ServeProcess, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=TIMEOUT)


def _inspect(client: httpx.Client, image: bytes) -> dict[str, Any]:
    response = client.post(f"/v1/lines/{LINE}/inspect", files=[("images", ("000.png", image, "image/png"))])
    assert response.status_code == 200, response.text
    return dict(response.json())


def _add(client: httpx.Client, name: str, strength: float = 1.0) -> httpx.Response:
    body = {"text": name, "strength": strength, "why": "replica test"}
    return client.post(f"/v1/lines/{LINE}/normalities", json=body)


@pytest.fixture(scope="module")
def image(bottle_dir: Path) -> bytes:
    return (bottle_dir / "test" / "broken_large" / "000.png").read_bytes()


def test_both_replicas_serve_the_line_one_of_them_created(replicas: Replicas) -> None:
    with _client(replicas.a, KEY_A) as a:
        created = a.get(f"/v1/lines/{LINE}/audit", params={"action": "line.create"}).json()["entries"]
    assert len(created) == 1, created  # started at once, yet the line was created once
    with Registry(replicas.database) as registry:  # the registry the test meant, not a file named like the URL
        assert registry.dialect == replicas.backend
        assert [entry.id for entry in registry.audit(LINE, action="line.create")] == [created[0]["id"]]
    for server in (replicas.a, replicas.b):
        assert httpx.get(f"{server.url}/healthz", timeout=TIMEOUT).json()["lines_loaded"] == [LINE]


def test_a_normality_added_through_a_applies_to_the_next_inspection_through_b(
    replicas: Replicas, image: bytes
) -> None:
    with _client(replicas.a, KEY_A) as a, _client(replicas.b, KEY_B) as b:
        before = _inspect(b, image)
        assert before["normalities"] == []
        added = _add(a, "broken glass")
        assert added.status_code == 201, added.text
        during = _inspect(b, image)  # at once: no wait stands in for the bound
        assert during["normalities"] == [{"name": "broken glass", "strength": 1.0}]
        assert during["results"][0]["score_before"] == pytest.approx(before["results"][0]["score_before"], rel=1e-5)
        assert during["results"][0]["score_after"] < before["results"][0]["score_after"]
        removed = b.delete(f"/v1/lines/{LINE}/normalities/broken glass", params={"why": "replica test"})
        assert removed.status_code == 200, removed.text
        after = _inspect(a, image)
        assert after["normalities"] == []
        assert after["results"][0]["score_after"] == pytest.approx(before["results"][0]["score_after"], rel=1e-5)


def test_a_normality_removed_through_b_can_be_added_again_through_a_at_once(replicas: Replicas, image: bytes) -> None:
    with _client(replicas.a, KEY_A) as a, _client(replicas.b, KEY_B) as b:
        assert _add(a, "scratch").status_code == 201
        assert b.delete(f"/v1/lines/{LINE}/normalities/scratch").status_code == 200
        again = _add(a, "scratch", 0.5)  # A has not inspected since: it must not refuse from its own stale set
        assert again.status_code == 201, again.text
        assert _inspect(b, image)["normalities"] == [{"name": "scratch", "strength": 0.5}]
        assert a.delete(f"/v1/lines/{LINE}/normalities/scratch").status_code == 200
        assert _inspect(b, image)["normalities"] == []


def test_on_an_approval_line_a_proposal_is_checked_against_the_registry_not_a_stale_replica(
    replicas: Replicas, image: bytes
) -> None:
    with Registry(replicas.database) as registry:  # a second line, whose changes need a second person
        create_line(registry, "vials", LineConfig(class_name="vial", backbone="tiny-random", approval="required"), "t")
    with _client(replicas.a, KEY_A) as a, _client(replicas.b, KEY_B) as b:

        def approve(client: httpx.Client, proposed: httpx.Response) -> None:
            assert proposed.status_code == 202, proposed.text
            approved = client.post(f"/v1/lines/vials/changes/{proposed.json()['id']}/approve", json={"why": "ok"})
            assert approved.status_code == 200, approved.text

        approve(b, a.post("/v1/lines/vials/normalities", json={"text": "chip"}))
        inspected = a.post("/v1/lines/vials/inspect", files=[("images", ("000.png", image, "image/png"))])
        assert inspected.json()["normalities"] == [{"name": "chip", "strength": 1.0}]  # A now holds 'chip'
        approve(a, b.delete("/v1/lines/vials/normalities/chip"))  # removed through B
        again = a.post("/v1/lines/vials/normalities", json={"text": "chip"})  # A has not inspected since
        assert again.status_code == 202, again.text


async def _add_everywhere(replicas: Replicas, name: str, per_replica: int) -> list[httpx.Response]:
    body = {"text": name, "strength": 0.7, "why": "race"}
    async with (
        httpx.AsyncClient(base_url=replicas.a.url, headers={"X-API-Key": KEY_A}, timeout=TIMEOUT) as a,
        httpx.AsyncClient(base_url=replicas.b.url, headers={"X-API-Key": KEY_B}, timeout=TIMEOUT) as b,
    ):
        calls = [client.post(f"/v1/lines/{LINE}/normalities", json=body) for client in (a, b) * per_replica]
        return list(await asyncio.gather(*calls))


def test_concurrent_adds_of_one_name_on_both_replicas_one_wins_the_others_get_409(replicas: Replicas) -> None:
    responses = asyncio.run(_add_everywhere(replicas, "dent", per_replica=4))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 7, [r.text for r in responses]
    for response in responses:
        if response.status_code == 409:
            body = response.json()
            assert body["error"] == "duplicate_normality" and "already active" in body["detail"], body
    with _client(replicas.b, KEY_B) as b:
        adds = b.get(f"/v1/lines/{LINE}/audit", params={"action": "normality.add", "limit": 1000}).json()["entries"]
        assert [entry["details"]["name"] for entry in adds].count("dent") == 1
        listed = b.get(f"/v1/lines/{LINE}/normalities").json()["normalities"]
        assert [n["name"] for n in listed if n["name"] == "dent"] == ["dent"]
        assert b.delete(f"/v1/lines/{LINE}/normalities/dent").status_code == 200


async def _inspect_everywhere(replicas: Replicas, image: bytes, per_replica: int) -> list[tuple[str, int]]:
    """Inspections sent to both replicas at once; (replica, audit id) of each."""

    async def one(client: httpx.AsyncClient, replica: str) -> tuple[str, int]:
        files = [("images", ("000.png", image, "image/png"))]
        response = await client.post(f"/v1/lines/{LINE}/inspect", files=files)
        assert response.status_code == 200, response.text
        return replica, int(response.json()["results"][0]["audit_id"])

    async with (
        httpx.AsyncClient(base_url=replicas.a.url, headers={"X-API-Key": KEY_A}, timeout=TIMEOUT) as a,
        httpx.AsyncClient(base_url=replicas.b.url, headers={"X-API-Key": KEY_B}, timeout=TIMEOUT) as b,
    ):
        calls = [one(client, name) for client, name in ((a, "station-a"), (b, "station-b")) * per_replica]
        return list(await asyncio.gather(*calls))


def test_audit_rows_of_both_replicas_land_in_one_chain_without_loss(replicas: Replicas, image: bytes) -> None:
    with _client(replicas.a, KEY_A) as a:
        start = a.get(f"/v1/lines/{LINE}/audit", params={"limit": 1}).json()["entries"][0]["id"]
    answered = asyncio.run(_inspect_everywhere(replicas, image, per_replica=6))
    ids = [audit_id for _, audit_id in answered]
    assert len(set(ids)) == len(ids) == 12  # no id given twice
    with _client(replicas.a, KEY_A) as a, _client(replicas.b, KEY_B) as b:
        seen_a = a.get(f"/v1/lines/{LINE}/audit", params={"action": "inspect", "limit": 1000}).json()["entries"]
        seen_b = b.get(f"/v1/lines/{LINE}/audit", params={"action": "inspect", "limit": 1000}).json()["entries"]
        assert seen_a == seen_b  # one log, whichever replica is asked
        rows = {entry["id"]: entry["who"] for entry in seen_a if entry["id"] > start}
        # every answered inspection is logged once, under the replica that answered it
        assert rows == {audit_id: who for who, audit_id in answered}
        chains = [client.get("/v1/audit/verify").json() for client in (a, b)]
    assert chains[0]["ok"] and chains[0]["first_bad_row"] is None, chains[0]
    assert chains[0] == chains[1]


def test_a_replica_that_finds_the_line_created_by_another_at_start_up_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normadd.config import LineConfig
    from normadd.registry.errors import LineNotFoundError
    from normadd.serve.app import Service
    from normadd.serve.settings import ServiceConfig

    settings = ServiceConfig(
        line=LINE,
        line_config=LineConfig(class_name="bottle", backbone="tiny-random"),
        database=tmp_path / "normadd.db",
        api_keys={"station-a": KEY_A},
    )
    other, this = Service(settings), Service(settings)
    try:
        assert other.ensure_configured_line() is None  # the other replica created the line
        looked_up = this.registry.line

        def before_the_other_committed(name: str) -> Any:
            monkeypatch.setattr(this.registry, "line", looked_up)
            raise LineNotFoundError(f"no product line named '{name}'")

        monkeypatch.setattr(this.registry, "line", before_the_other_committed)
        assert this.ensure_configured_line() is None  # its create is refused as a duplicate: it uses the line
        assert [entry.action for entry in this.registry.audit(LINE)] == ["line.create"]
    finally:
        other.registry.close()
        this.registry.close()
