"""Real ``normadd serve`` processes for tests: start on a free port of 127.0.0.1, wait, stop.

Every wait is bounded; :func:`stop` terminates, then kills, so a test's ``finally`` never hangs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT_S = 120.0  # two tiny-random replicas starting at once on 2 busy cores


@dataclass
class ServeProcess:
    """One running ``normadd serve``: its base URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's output (for a failure message)."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(config: Path, log: Path, env: dict[str, str]) -> ServeProcess:
    """Start ``normadd serve --config config`` on a free port of 127.0.0.1 (does not wait)."""
    port = free_port()
    command = [sys.executable, "-m", "normadd", "serve", "--config", str(config), "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **env})
    return ServeProcess(f"http://127.0.0.1:{port}", process, log)


def wait_healthy(server: ServeProcess, timeout: float = START_TIMEOUT_S) -> None:
    """Return once ``/healthz`` answers 200.

    Raises:
        RuntimeError: The process exited or did not answer within ``timeout`` seconds (its log attached).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"normadd serve at {server.url} did not come up:\n{server.log_tail()}")
        time.sleep(0.2)


def stop(server: ServeProcess, timeout: float = 15.0) -> None:
    """Terminate the process; kill it when it does not exit within ``timeout`` seconds."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=timeout)


@contextmanager
def running(config: Path, log: Path, env: dict[str, str], timeout: float = START_TIMEOUT_S) -> Iterator[ServeProcess]:
    """A started and healthy ``normadd serve`` for the ``with`` block; stopped afterwards, also on failure.

    Raises:
        RuntimeError: It did not come up within ``timeout`` seconds (its log attached).
    """
    server = start(config, log, env)
    try:
        wait_healthy(server, timeout)
        yield server
    finally:
        stop(server)
