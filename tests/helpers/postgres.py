"""A throwaway PostgreSQL cluster for the tests: ``initdb`` + ``pg_ctl`` in a temporary folder.

The binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``,
found by glob; ``.ci/run`` installs it). The cluster listens on 127.0.0.1 at a free port with its
socket in its own folder, so it never collides with a cluster the package may have started on
5432. ``initdb`` and ``pg_ctl`` refuse to run as root: as root they run as the ``postgres`` user
via ``runuser``. Without the binaries the tests skip, except in CI (``CI`` set), where they fail.

The superuser ``normadd`` connects without a password (trust) over TCP and the socket; every other
role must give its password over TCP (scram-sha-256), so wrong credentials can be tested.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "normadd"
INSTALL = "apt-get install -y postgresql"
HBA = f"""
local all all trust
host all {SUPERUSER} 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` with ``initdb`` (or the one on PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def require_bin_dir() -> Path:
    """The PostgreSQL binaries; skips without them, or fails in CI."""
    found = find_bin_dir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is missing in CI: .ci/run installs Debian's postgresql package ({INSTALL})")
        pytest.skip(f"PostgreSQL binaries not found ({INSTALL}); CI always runs these tests")
    return found


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    """A running throwaway cluster.

    Attributes:
        bin_dir: Its binaries.
        root: Temporary folder holding the data directory, the log and the socket.
        port: TCP port on 127.0.0.1.
    """

    bin_dir: Path
    root: Path
    port: int

    def url(self, database: str, user: str = SUPERUSER, password: str | None = None) -> str:
        """A ``postgresql://`` URL of one of its databases over TCP."""
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement as the superuser, outside a transaction (CREATE DATABASE, CREATE ROLE)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as connection:
            connection.execute(sql)  # type: ignore[arg-type]

    def create_database(self, template: str | None = None) -> str:
        """A new empty database (or a copy of ``template``); returns its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return name

    def create_schema(self, database: str) -> str:
        """A new empty schema in ``database``; returns its name (see :meth:`schema_url`)."""
        name = f"s_{uuid.uuid4().hex[:12]}"
        self.execute(f"CREATE SCHEMA {name}", database)
        return name

    def schema_url(self, database: str, schema: str) -> str:
        """A URL whose connections see only ``schema`` (libpq ``options``: ``search_path``)."""
        return f"{self.url(database)}?options=-csearch_path%3D{schema}"

    def drop_database(self, name: str) -> None:
        """Drop a database, closing what is still connected to it."""
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(_as_postgres(command), capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


@contextmanager
def throwaway_cluster(bin_dir: Path) -> Iterator[Cluster]:
    """Start a cluster in a temporary folder; stop it and remove the folder afterwards (also on failure)."""
    root = Path(tempfile.mkdtemp(prefix="normadd-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "log"
    started = False
    try:
        _run(
            [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--no-locale"],
            "initdb",
        )
        (data / "pg_hba.conf").write_text(HBA)
        port = free_port()
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"], "pg_ctl start")
        started = True
        yield Cluster(bin_dir, root, port)
    finally:
        if started:
            try:
                _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], "pg_ctl stop")
            finally:
                shutil.rmtree(root, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
