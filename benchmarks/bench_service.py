"""Bounded load on the REST service: requests/s, p50/p99 latency and errors under concurrency.

Starts ``normadd serve`` (tiny-random backbone, a fresh registry in a temporary folder) on a
free port of 127.0.0.1, sends ``--requests`` inspections of one bottle image with
``--concurrency`` in flight, and reads the forward-pass count from ``/healthz`` to show how
many requests each micro-batched pass served. Only ever talks to 127.0.0.1.

    python benchmarks/bench_service.py                          # 200 requests, 16 at once
    python benchmarks/bench_service.py --requests 500 --maps    # also render the PNG maps
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import RESULTS, print_table, write_csv

KEY = "bench-secret-key"
BOTTLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_ad" / "bottle" / "test" / "broken_large"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(folder: Path, port: int, batch_wait_ms: float) -> subprocess.Popen[bytes]:
    config = folder / "line.yaml"
    config.write_text(
        "class_name: bottle\nbackbone: tiny-random\nnormalities: [broken]\ndatabase: normadd.db\n"
        f"service:\n  line: bottle\n  batch_wait_ms: {batch_wait_ms}\n  device: cpu\n"
    )
    env = {**os.environ, "NORMADD_API_KEYS": f"bench={KEY}", "NORMADD_CACHE_DIR": str(folder / "cache")}
    command = [sys.executable, "-m", "normadd", "serve", "--config", str(config), "--port", str(port)]
    return subprocess.Popen(
        [*command, "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"normadd serve exited: {process.stderr.read().decode()[-2000:] if process.stderr else ''}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("normadd serve did not answer /healthz in time")


async def load(url: str, image: bytes, requests: int, concurrency: int, maps: bool) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=120, limits=limits) as client:

        async def one() -> None:
            nonlocal errors
            async with gate:
                start = time.perf_counter()
                try:
                    response = await client.post(
                        "/v1/lines/bottle/inspect",
                        params={"maps": str(maps).lower()},
                        files=[("images", ("000.png", image, "image/png"))],
                    )
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        return latencies, errors, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--image", type=Path, default=BOTTLE / "000.png")
    parser.add_argument("--maps", action="store_true", help="ask for the PNG maps too")
    args = parser.parse_args()
    image = args.image.read_bytes()
    load_average = os.getloadavg()[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        server = start_server(Path(folder), port, args.batch_wait_ms)
        try:
            wait_healthy(url, server)
            asyncio.run(load(url, image, 4, 4, args.maps))  # warm-up, not counted
            before = httpx.get(f"{url}/healthz").json()
            latencies, errors, seconds = asyncio.run(load(url, image, args.requests, args.concurrency, args.maps))
            after = httpx.get(f"{url}/healthz").json()
        finally:
            server.terminate()
            server.wait(timeout=30)
    passes = after["forward_passes"] - before["forward_passes"]
    row = {
        "backbone": "tiny-random",
        "image": f"{args.image.name} ({len(image) // 1024} KiB)",
        "maps": args.maps,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "requests/s": f"{args.requests / seconds:.1f}",
        "p50_ms": f"{1000 * percentile(latencies, 50):.0f}",
        "p99_ms": f"{1000 * percentile(latencies, 99):.0f}",
        "errors": errors,
        "forward_passes": passes,
        "images/pass": f"{(after['images_inspected'] - before['images_inspected']) / max(passes, 1):.1f}",
        "cpu_cores": os.cpu_count(),
        "load_avg_1m": f"{load_average:.1f}",  # other work on the machine inflates the latencies
    }
    print_table([row])
    suffix = "_maps" if args.maps else ""
    write_csv([row], RESULTS / f"bench_service{suffix}.csv")
    if errors:
        raise SystemExit(f"{errors} request(s) failed")


if __name__ == "__main__":
    main()
