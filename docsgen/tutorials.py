"""Run the tutorial steps of ``docsgen/tutorials.yaml`` and record what they print and write.

The pages show the recorded runs (:mod:`docsgen.hooks`); ``tests/integration/test_docs.py``
runs the same steps and checks them. A run is recorded under ``build/docs-tutorials/`` with a key
(a hash of the steps, this runner and the ``normadd`` sources), so the docs build reuses a run of
the same code (CI runs the tutorial test before ``mkdocs build``) and reruns when any of them changed.

Each tutorial gets a fresh folder ``<root>/<tutorial>/`` holding ``work/`` (the current directory of
every command, like a clone's root) and ``shared`` (a link to the real ``../shared``), so the
commands' ``../shared/data/...`` paths are the ones a reader types. ``normadd`` and ``python`` on
the commands' ``PATH`` run this tree's code with this interpreter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS_FILE = Path(__file__).with_name("tutorials.yaml")
OUTPUTS = REPO_ROOT / "build" / "docs-tutorials"
SHARED = REPO_ROOT.parent / "shared"
PAGE_PORT = 8000
STEP_TIMEOUT_S = 600
READY_TIMEOUT_S = 120
OUTPUT_WIDTH = 100  # columns of the rich tables the commands print


@dataclass
class Step:
    """One tutorial step as written in ``tutorials.yaml``."""

    id: str
    run: str | None = None
    write: str | None = None
    content: str | None = None
    background: bool = False
    ready: str | None = None
    expect: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    pictures: list[str] = field(default_factory=list)
    show_output: bool = True

    def command(self, port: int = PAGE_PORT) -> str:
        """The command with ``{port}`` filled in (8000 on the page)."""
        return (self.run or "").strip().replace("{port}", str(port))


@dataclass
class StepRun:
    """What one step did: its exit code, its output (stdout and stderr together) and its time."""

    id: str
    returncode: int
    output: str
    seconds: float
    missing_files: list[str] = field(default_factory=list)
    missing_text: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Exit code 0, every expected text printed and every expected file written."""
        return self.returncode == 0 and not self.missing_files and not self.missing_text


def load_tutorials(path: Path = STEPS_FILE) -> dict[str, list[Step]]:
    """The tutorials by name, each a list of steps (unknown step keys are refused by name)."""
    data = yaml.safe_load(path.read_text())
    tutorials: dict[str, list[Step]] = {}
    for name, steps in data.items():
        tutorials[name] = []
        for raw in steps:
            unknown = set(raw) - set(Step.__dataclass_fields__)
            if unknown:
                raise ValueError(f"{path}: step {raw.get('id')!r} of {name!r} has unknown keys {sorted(unknown)}")
            tutorials[name].append(Step(**raw))
    return tutorials


def sources_key() -> str:
    """A hash of the steps, this runner and every file of the normadd package: a recorded run's identity."""
    digest = hashlib.sha256()
    paths = [STEPS_FILE, Path(__file__), *sorted((REPO_ROOT / "src" / "normadd").rglob("*"))]
    for path in paths:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(REPO_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _shims(folder: Path) -> Path:
    """``normadd`` and ``python`` commands that run this tree's code with this interpreter."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, target in (("normadd", f'"{sys.executable}" -m normadd'), ("python", f'"{sys.executable}"')):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        shim.chmod(0o755)
    return bin_dir


def _environment(folder: Path) -> dict[str, str]:
    bin_dir = _shims(folder)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("NORMADD_", "PYTEST_"))}
    pythonpath = [str(REPO_ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(pythonpath),
        HF_HUB_OFFLINE="1",
        NORMADD_OFFLINE="1",
        NORMADD_CACHE_DIR=str(folder / "cache"),
        COLUMNS=str(OUTPUT_WIDTH),
        NO_COLOR="1",
        TERM="dumb",
        USER="alice",
    )
    return env


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"background command exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {READY_TIMEOUT_S} s: {log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # the process group this runner started for the step
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _as_on_page(output: str, folder: Path, port: int) -> str:
    """Output as the reader's run prints it: paths relative to the clone, the page's port."""
    for absolute, relative in (
        (f"{folder / 'work'}/", ""),
        (str(folder / "shared"), "../shared"),
        (str(SHARED.resolve()), "../shared"),
        (str(folder / "cache"), "~/.cache/normadd"),
    ):
        output = output.replace(absolute, relative)
    return output.replace(f":{port}", f":{PAGE_PORT}")


def run_tutorial(name: str, steps: list[Step], folder: Path, port: int | None = None) -> list[StepRun]:
    """Run one tutorial's steps in a fresh ``folder``; stop at the first step that fails."""
    if folder.exists():
        shutil.rmtree(folder)
    work = folder / "work"
    work.mkdir(parents=True)
    (folder / "shared").symlink_to(SHARED, target_is_directory=True)
    env = _environment(folder)
    port = port or free_port()
    runs: list[StepRun] = []
    background: list[subprocess.Popen[bytes]] = []
    try:
        for step in steps:
            start = time.perf_counter()
            if step.write is not None:
                target = work / step.write
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(step.content or "")
                runs.append(StepRun(step.id, 0, "", 0.0))
                continue
            if step.background:
                log = folder / f"{step.id}.log"
                with log.open("wb") as output:
                    process = subprocess.Popen(
                        ["bash", "-c", step.command(port)],
                        cwd=work,
                        env=env,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                background.append(process)
                _wait_ready((step.ready or "").replace("{port}", str(port)), process, log)
                runs.append(StepRun(step.id, 0, "", time.perf_counter() - start))
                continue
            done = subprocess.run(
                ["bash", "-c", step.command(port)],
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=STEP_TIMEOUT_S,
                check=False,
            )
            output = _as_on_page(done.stdout.decode(errors="replace"), folder, port)
            run = StepRun(
                step.id,
                done.returncode,
                output,
                time.perf_counter() - start,
                missing_files=[f for f in [*step.files, *step.pictures] if not (work / f).is_file()],
                missing_text=[text for text in step.expect if text not in output],
            )
            runs.append(run)
            if not run.ok:
                break
    finally:
        for process in background:
            _stop(process)
    (folder / "runs.json").write_text(json.dumps([asdict(run) for run in runs], indent=1))
    return runs


def record_all(root: Path = OUTPUTS) -> dict[str, list[StepRun]]:
    """Run every tutorial under ``root`` and write the key of this run (only when all steps passed)."""
    key_file = root / "key"
    key_file.unlink(missing_ok=True)
    key = sources_key()  # of the sources as they are when the run starts
    tutorials = load_tutorials()
    results = {name: run_tutorial(name, steps, root / name) for name, steps in tutorials.items()}
    complete = all(len(results[name]) == len(steps) for name, steps in tutorials.items())
    if complete and all(run.ok for runs in results.values() for run in runs):
        key_file.write_text(key)
    return results


def recorded_runs(root: Path = OUTPUTS, current_only: bool = True) -> dict[str, dict[str, StepRun]] | None:
    """The recorded runs; None when there are none or (``current_only``) they are not of the current sources."""
    key_file = root / "key"
    if current_only and (not key_file.is_file() or key_file.read_text() != sources_key()):
        return None
    runs: dict[str, dict[str, StepRun]] = {}
    for name in load_tutorials():
        records_file = root / name / "runs.json"
        if not records_file.is_file():
            return None
        records: list[dict[str, Any]] = json.loads(records_file.read_text())
        runs[name] = {record["id"]: StepRun(**record) for record in records}
    return runs


def step_file(name: str, path: str, root: Path = OUTPUTS) -> Path:
    """A file a tutorial's steps wrote (a picture shown on the page)."""
    return root / name / "work" / path


def main(names: list[str]) -> int:
    """``python -m docsgen.tutorials [TUTORIAL ...]``: rerun all tutorials (and record the key) or some."""
    if names:
        tutorials = load_tutorials()
        results = {name: run_tutorial(name, tutorials[name], OUTPUTS / name) for name in names}
    else:
        results = record_all()
    failed = 0
    for tutorial, tutorial_runs in results.items():
        for step_run in tutorial_runs:
            failed += not step_run.ok
            status = "ok" if step_run.ok else f"FAILED (exit {step_run.returncode})"
            print(f"{tutorial}/{step_run.id}: {status} in {step_run.seconds:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
