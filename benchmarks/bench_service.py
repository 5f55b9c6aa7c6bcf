"""Bounded load on the REST service: 1 replica on SQLite vs 2 replicas on one PostgreSQL.

Each setup starts ``--replicas`` real ``normadd serve`` processes (tiny-random backbone by
default, ``--backbone`` to change) on free ports of 127.0.0.1, all on one fresh registry: an
SQLite file in a temporary folder, or a database of a throwaway PostgreSQL cluster that the
script starts itself (``initdb`` + ``pg_ctl``, the recipe of ``tests/helpers/postgres.py``) and
removes afterwards. The same load goes to every setup: ``--requests`` inspections of one bottle
image with ``--concurrency`` in flight, sent to the replicas in turn, while ``--adds`` normality
adds go through the replicas in turn during the load (so the other replicas reload their
normalities mid-load, as in production). Every request must succeed (``errors`` must be 0).
Torch threads per replica are the machine's cores split between the replicas, so a setup never
uses more threads than there are cores. Only ever talks to 127.0.0.1.

With two or more replicas a second table times the cost that LISTEN/NOTIFY could save: the
first inspection through replica B right after an add through replica A (B reloads its
normalities inside that request) against the next one (nothing to reload), ``--probes`` times.

    python -m benchmarks.bench_service                                  # sqlite:1 and postgresql:2
    python -m benchmarks.bench_service --setups sqlite:1,sqlite:2       # no PostgreSQL needed
    python -m benchmarks.bench_service --requests 500 --maps            # also render the PNG maps
    python -m benchmarks.bench_service --setups sqlite:1 --ray          # + inspect local vs --ray images/s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.common import RESULTS, print_table, write_csv

KEY = "bench-secret-key"
LINE = "bottle"
REPO = Path(__file__).resolve().parents[1]
BOTTLE = REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle" / "test" / "broken_large"
sys.path.insert(0, str(REPO / "tests"))  # the throwaway-cluster recipe the tests use (tests/helpers/postgres.py)


@dataclass(frozen=True)
class Setup:
    """One row of the table: how many replicas on which registry backend."""

    backend: str  # sqlite or postgresql
    replicas: int

    @property
    def name(self) -> str:
        """How the table names it."""
        return f"{self.replicas} replica{'s' if self.replicas > 1 else ''}, {self.backend}"


def parse_setups(text: str) -> list[Setup]:
    """``sqlite:1,postgresql:2`` as setups."""
    setups = []
    for item in text.split(","):
        backend, _, count = item.strip().partition(":")
        if backend not in ("sqlite", "postgresql") or not count.isdigit() or int(count) < 1:
            raise SystemExit(f"--setups: '{item}' is not BACKEND:REPLICAS (sqlite or postgresql, e.g. postgresql:2)")
        setups.append(Setup(backend, int(count)))
    return setups


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def registry(backend: str, folder: Path) -> Iterator[str]:
    """A fresh registry: an SQLite file in ``folder`` or a database of a throwaway PostgreSQL cluster."""
    if backend == "sqlite":
        yield str(folder / "normadd.db")
        return
    from helpers.postgres import find_bin_dir, throwaway_cluster

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL binaries not found (apt-get install -y postgresql), or run --setups sqlite:1")
    with throwaway_cluster(bin_dir) as cluster:
        yield cluster.url(cluster.create_database())


def start_replica(
    folder: Path, index: int, database: str, args: argparse.Namespace, threads: int
) -> tuple[str, subprocess.Popen[bytes]]:
    config = folder / "line.yaml"
    config.write_text(
        f"class_name: bottle\nbackbone: {args.backbone}\ndatabase: '{database}'\n"
        f"service:\n  line: {LINE}\n  batch_wait_ms: {args.batch_wait_ms}\n  device: cpu\n"
    )
    env = {
        **os.environ,
        "NORMADD_API_KEYS": f"bench={KEY}",
        "NORMADD_CACHE_DIR": str(folder / "cache"),
        "OMP_NUM_THREADS": str(threads),
    }
    port = free_port()
    command = [sys.executable, "-m", "normadd", "serve", "--config", str(config), "--port", str(port)]
    log = (folder / f"replica-{index}.log").open("wb")
    process = subprocess.Popen([*command, "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", process


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"normadd serve exited:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"normadd serve at {url} did not answer /healthz in {timeout:.0f} s")


@dataclass
class Load:
    """What one run of the load measured."""

    latencies: list[float]
    errors: int
    seconds: float
    adds: int


async def load(urls: list[str], image: bytes, args: argparse.Namespace, requests: int, adds: int, tag: str) -> Load:
    """``requests`` inspections (``args.concurrency`` in flight) and ``adds`` adds, both over the replicas in turn."""
    latencies: list[float] = []
    errors = 0
    gate = asyncio.Semaphore(args.concurrency)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    timeout = httpx.Timeout(300.0)
    clients = [
        httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=timeout, limits=limits) for url in urls
    ]
    every = max(1, requests // (adds + 1))  # an add after every `every` inspections have been sent
    async with contextlib.AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)

        async def inspect(index: int) -> None:
            nonlocal errors
            async with gate:
                start = time.perf_counter()
                try:
                    response = await clients[index % len(clients)].post(
                        f"/v1/lines/{LINE}/inspect",
                        params={"maps": str(args.maps).lower()},
                        files=[("images", ("000.png", image, "image/png"))],
                    )
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

        async def add(index: int) -> None:
            nonlocal errors
            body = {"text": f"{tag} defect {index}", "strength": 0.5, "why": "bench_service"}
            try:
                response = await clients[index % len(clients)].post(f"/v1/lines/{LINE}/normalities", json=body)
                errors += response.status_code != 201
            except httpx.HTTPError:
                errors += 1

        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter()
        for index in range(requests):
            tasks.append(asyncio.create_task(inspect(index)))
            if (index + 1) % every == 0 and index // every < adds:
                tasks.append(asyncio.create_task(add(index // every)))
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return Load(latencies, errors, time.perf_counter() - start, min(adds, requests // every))


def reload_probe(urls: list[str], image: bytes, probes: int) -> dict[str, float]:
    """Median ms of the first inspection through B after an add through A, and of the one after it."""
    first, next_ = [], []
    with (
        httpx.Client(base_url=urls[0], headers={"X-API-Key": KEY}, timeout=300) as a,
        httpx.Client(base_url=urls[1], headers={"X-API-Key": KEY}, timeout=300) as b,
    ):
        files = [("images", ("000.png", image, "image/png"))]
        for index in range(probes):
            added = a.post(f"/v1/lines/{LINE}/normalities", json={"text": f"probe {index}", "strength": 0.5})
            if added.status_code != 201:
                raise SystemExit(f"probe add failed: {added.text}")
            for times in (first, next_):
                start = time.perf_counter()
                response = b.post(f"/v1/lines/{LINE}/inspect", files=files)
                times.append(time.perf_counter() - start)
                if response.status_code != 200 or f"probe {index}" not in str(response.json()["normalities"]):
                    raise SystemExit(f"replica B did not apply the add at once: {response.text[:500]}")
    return {"first_after_add_ms": 1000 * statistics.median(first), "next_ms": 1000 * statistics.median(next_)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_setup(
    setup: Setup, image: bytes, args: argparse.Namespace
) -> tuple[dict[str, object], dict[str, object] | None]:
    """Start the setup's replicas, warm them, load them; the row (and the reload probe's row)."""
    threads = max(1, (os.cpu_count() or 1) // setup.replicas)
    with tempfile.TemporaryDirectory() as temporary, registry(setup.backend, Path(temporary)) as database:
        folder = Path(temporary)
        started: list[tuple[str, subprocess.Popen[bytes]]] = []
        try:
            # the first replica creates the line; the others start once it is there
            started.append(start_replica(folder, 0, database, args, threads))
            wait_healthy(*started[0], folder / "replica-0.log")
            for index in range(1, setup.replicas):
                started.append(start_replica(folder, index, database, args, threads))
            for index, (url, process) in enumerate(started):
                wait_healthy(url, process, folder / f"replica-{index}.log")
            urls = [url for url, _ in started]
            asyncio.run(load(urls, image, args, 4 * setup.replicas, 0, "warm"))  # warm-up, not counted
            load_average = os.getloadavg()[0]
            measured = asyncio.run(load(urls, image, args, args.requests, args.adds, "load"))
            probe = reload_probe(urls, image, args.probes) if setup.replicas > 1 else None
        finally:
            for _, process in started:
                process.terminate()
            for _, process in started:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=30)
    row: dict[str, object] = {
        "setup": setup.name,
        "replicas": setup.replicas,
        "backend": setup.backend,
        "backbone": args.backbone,
        "maps": args.maps,
        "requests": args.requests,
        "adds": measured.adds,
        "concurrency": args.concurrency,
        "requests/s": f"{args.requests / measured.seconds:.1f}",
        "p50_ms": f"{1000 * percentile(measured.latencies, 50):.0f}",
        "p99_ms": f"{1000 * percentile(measured.latencies, 99):.0f}",
        "errors": measured.errors,
        "threads/replica": threads,
        "cpu_cores": os.cpu_count(),
        "load_avg_1m": f"{load_average:.1f}",  # other work on the machine inflates the latencies
    }
    reload_row = None
    if probe is not None:
        reload_row = {
            "setup": setup.name,
            "probes": args.probes,
            "first_inspection_after_add_ms": f"{probe['first_after_add_ms']:.0f}",
            "next_inspection_ms": f"{probe['next_ms']:.0f}",
            "load_avg_1m": f"{os.getloadavg()[0]:.1f}",
        }
    return row, reload_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", type=parse_setups, default=parse_setups("sqlite:1,postgresql:2"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--adds", type=int, default=4, help="normality adds during the load")
    parser.add_argument("--probes", type=int, default=5, help="add-then-inspect probes (2+ replicas)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--backbone", default="tiny-random")
    parser.add_argument("--image", type=Path, default=BOTTLE / "000.png")
    parser.add_argument("--maps", action="store_true", help="ask for the PNG maps too")
    parser.add_argument(
        "--ray", action="store_true", help="also time `normadd inspect` local vs --ray (benchmarks/bench_ray.py)"
    )
    parser.add_argument("--ray-limit", type=int, default=None, help="only the first N bottle test images for --ray")
    args = parser.parse_args()
    image = args.image.read_bytes()
    rows, reload_rows = [], []
    for setup in args.setups:
        row, reload_row = run_setup(setup, image, args)
        rows.append(row)
        if reload_row is not None:
            reload_rows.append(reload_row)
    print_table(rows)
    suffix = "_maps" if args.maps else ""
    write_csv(rows, RESULTS / f"bench_service{suffix}.csv")
    if reload_rows:
        print()
        print_table(reload_rows)
        write_csv(reload_rows, RESULTS / f"bench_service_reload{suffix}.csv")

    if args.ray:  # the batch side of issue 13: the same inspect command, local and on Ray
        from benchmarks import bench_ray

        ray_rows = bench_ray.run(bench_ray.bottle_test_images(args.ray_limit), args.backbone)
        print()
        print(bench_ray.markdown_table(ray_rows))
        write_csv(ray_rows, RESULTS / "bench_ray.csv")

    errors = sum(int(str(row["errors"])) for row in rows)
    if errors:
        raise SystemExit(f"{errors} request(s) failed")


if __name__ == "__main__":
    main()
