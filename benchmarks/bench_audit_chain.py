"""Cost of the tamper-evident audit log and of hashed API keys.

Appends ``--rows`` inspection rows to a fresh registry (in transactions of 16, as one inspection
request of 16 images writes them), then walks the whole hash chain as ``normadd audit verify``
and the service's start-up do. Also times one scrypt key check (a key's first request) and a
remembered key (every later request).

    python benchmarks/bench_audit_chain.py                 # 10,000 and 100,000 rows
    python benchmarks/bench_audit_chain.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, print_table, write_csv
from normadd.registry.store import InspectionRecord, LineRecord, Registry
from normadd.serve.authority import ApiKey, KeyRing


def chain_row(rows: int, folder: Path) -> dict[str, object]:
    """Append ``rows`` inspection rows, then verify the chain; one table row of timings."""
    path = folder / f"audit-{rows}.db"
    active = [{"name": "scratch", "strength": 0.5}]
    with Registry(path) as registry:
        registry.create_line(LineRecord("line-1", "bottle", backbone="tiny-random"), "bench")
        start = time.perf_counter()
        for first in range(0, rows - 1, 16):
            batch = [
                InspectionRecord(f"{i:064x}", 0.91, 0.42, active, f"{i:06d}.png")
                for i in range(first, min(first + 16, rows - 1))
            ]
            registry.record_inspections("line-1", batch, "station-1")
        appended = time.perf_counter() - start
        start = time.perf_counter()
        report = registry.verify_audit_chain()
        verified = time.perf_counter() - start
    assert report.ok and report.rows == rows, report
    size = sum(p.stat().st_size for p in folder.glob(path.name + "*"))
    return {
        "rows": rows,
        "append_rows/s": f"{rows / appended:,.0f}",
        "verify_s": f"{verified:.2f}",
        "verify_rows/s": f"{rows / verified:,.0f}",
        "db_MiB": f"{size / 2**20:.1f}",
        "load_avg_1m": f"{os.getloadavg()[0]:.1f}",
    }


def key_row(repeats: int = 5) -> dict[str, object]:
    """Time the scrypt check of a key's first request and the remembered lookup after it."""
    keys = [ApiKey.from_setting(f"key-{i}", {"secret": f"secret-number-{i}", "scopes": ["inspect"]}) for i in range(4)]
    first = []
    for _ in range(repeats):
        ring = KeyRing(keys)
        start = time.perf_counter()
        assert ring.find("secret-number-0") is keys[0]
        first.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(10_000):
        ring.find("secret-number-0")
    remembered = (time.perf_counter() - start) / 10_000
    return {
        "scrypt": "n=2^14 r=8 p=1",
        "first_request_ms": f"{1000 * min(first):.0f}",
        "later_requests_us": f"{1e6 * remembered:.1f}",
        "load_avg_1m": f"{os.getloadavg()[0]:.1f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        chain = [chain_row(rows, Path(folder)) for rows in args.rows]
    print_table(chain)
    write_csv(chain, RESULTS / "bench_audit_chain.csv")
    keys = [key_row()]
    print_table(keys)
    write_csv(keys, RESULTS / "bench_api_keys.csv")


if __name__ == "__main__":
    main()
