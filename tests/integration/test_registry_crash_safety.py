"""SIGKILL in the middle of registry writes, many times: every committed change survives.

A writer process adds and removes normalities and logs inspections in a loop, printing each
change only after its commit returned. We kill it at random moments, then check that every
printed change is in the database, that the active normalities are exactly what the audit log
replays to (no change without its audit row, no audit row without its change), that the
audit chain verifies, and that SQLite's integrity check passes. Runs on SQLite and on PostgreSQL
(there the kill drops the client's connection; the server rolls its open transaction back).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from normadd.registry.store import LineRecord, Registry

KILLS = 20

WRITER = """
import os, sys
from normadd.registry.store import InspectionRecord, NormalityRecord, Registry

registry = Registry(sys.argv[1])
run = sys.argv[2]
print("ready", flush=True)
previous = None
for i in range(1_000_000):
    name = f"{run}-{i}"
    record = NormalityRecord(name, "scratch", 0.5, ["scratched bottle"], os.urandom(64), "tiny-random|x")
    registry.add_normality("line-1", record, "w")
    print("added", name, flush=True)
    [audit_id] = registry.record_inspections("line-1", [InspectionRecord(os.urandom(32).hex(), 0.9, 0.1, [])], "w")
    print("inspected", audit_id, flush=True)
    if previous is not None and i % 3 == 0:
        registry.remove_normality("line-1", previous, "w", "crash test")
        print("removed", previous, flush=True)
    previous = name
"""


def test_committed_changes_survive_sigkill_and_the_database_stays_sound(registry_location: str) -> None:
    database = registry_location
    with Registry(database) as registry:
        registry.create_line(LineRecord("line-1", "bottle", backbone="tiny-random"), "test")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    rng = random.Random(0)
    reported: dict[str, list[str]] = {"added": [], "inspected": [], "removed": []}
    started = time.monotonic()
    for run in range(KILLS):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(database), f"r{run}"], stdout=subprocess.PIPE, env=env, text=True
        )
        # kill while it writes, not while Python and the driver import (psycopg alone takes ~0.7 s on a busy machine)
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.05, 0.6))
        writer.send_signal(signal.SIGKILL)
        output, _ = writer.communicate(timeout=30)
        assert writer.returncode == -signal.SIGKILL
        for line in output.splitlines():
            kind, _, value = line.partition(" ")
            if value:  # a line cut by the kill has no value; its change may or may not be committed
                reported[kind].append(value)
    elapsed = time.monotonic() - started
    assert len(reported["added"]) > KILLS, f"the writers committed too little to test anything: {reported}"

    with Registry(database) as registry:
        assert registry.integrity_check() == "ok"
        assert registry.verify_audit_chain().ok
        entries = registry.audit("line-1", limit=10**9)
        audit_ids = {e.id for e in entries}
        assert {int(i) for i in reported["inspected"]} <= audit_ids
        replayed: set[str] = set()
        for entry in sorted(entries, key=lambda e: e.id):
            if entry.action == "normality.add":
                replayed.add(entry.details["name"])
            elif entry.action == "normality.remove":
                replayed.remove(entry.details["name"])
        active = {n.name for n in registry.normalities("line-1")}
        assert active == replayed
        assert set(reported["added"]) - set(reported["removed"]) <= active | {
            e.details["name"] for e in entries if e.action == "normality.remove"
        }
        assert not set(reported["removed"]) & active
    survived = f"{len(reported['added'])} adds, {len(audit_ids)} audit rows survive"
    print(f"{registry.dialect}: {KILLS} kills in {elapsed:.1f} s; {survived}")
