"""MkDocs hooks (``hooks:`` in mkdocs.yml): fill the pages' markers with what the code and the runs say.

Markers a page may hold (each on its own line):

- ``<!-- step: TUTORIAL/ID -->``: a tutorial step of ``docsgen/tutorials.yaml``, with its recorded
  output and pictures (the tutorials are run first when no run of the current sources is recorded);
- ``<!-- table: PATH.csv -->``: a CSV file of the repository (e.g. ``benchmarks/results/NAME.csv``)
  as a Markdown table, read at build time;
- ``<!-- cli-reference -->``, ``<!-- rest-reference -->``, ``<!-- config-table: NAME -->`` (NAME: a
  dataclass of :func:`docsgen.reference.config_tables`), ``<!-- tutorial-timings -->``;
- a display equation between lines ``$$``, typeset to SVG at build time.

Anything wrong (a missing CSV, an unknown marker, a failed tutorial step, a config field with no
description) is logged as a warning, which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from mkdocs.structure.files import File, Files  # noqa: E402

from docsgen import reference, render, tutorials  # noqa: E402

log = logging.getLogger("mkdocs.hooks.normadd")
MARKER = re.compile(r"^<!--[ \t]*([a-z-]+)(?::[ \t]*(.+?))?[ \t]*-->[ \t]*$", re.MULTILINE)
EQUATION = re.compile(r"^\$\$\n(.+?)\n\$\$[ \t]*$", re.MULTILINE | re.DOTALL)
GENERATED = "tutorials/generated"

_state: dict[str, Any] = {}


def on_config(config: Any) -> Any:
    """Start each build with fresh generated text."""
    _state.clear()
    return config


def _runs() -> dict[str, dict[str, tutorials.StepRun]]:
    if "runs" not in _state:
        # NORMADD_DOCS_STALE_RUNS=1: show the recorded runs even if the sources changed (while writing pages)
        runs = tutorials.recorded_runs(current_only=not os.environ.get("NORMADD_DOCS_STALE_RUNS"))
        if runs is None:
            log.info("normadd: running the tutorials (no recorded run of the current sources)")
            tutorials.record_all()
            runs = tutorials.recorded_runs(current_only=False) or {}
        for name, steps in runs.items():
            for step_id, run in steps.items():
                if not run.ok:
                    log.warning(
                        f"tutorial step {name}/{step_id} failed (exit {run.returncode}, missing files "
                        f"{run.missing_files}, missing text {run.missing_text}): {run.output[-1500:]}"
                    )
        _state["runs"] = runs
    return _state["runs"]  # type: ignore[no-any-return]


def on_files(files: Files, config: Any) -> Files:
    """Publish the pictures the tutorial steps wrote under ``tutorials/generated/<tutorial>/``."""
    _runs()
    for name, steps in tutorials.load_tutorials().items():
        for step in steps:
            for picture in step.pictures:
                source = tutorials.step_file(name, picture)
                if source.is_file():
                    uri = f"{GENERATED}/{name}/{Path(picture).name}"
                    files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files


def _step(argument: str, page_uri: str) -> str:
    tutorial, _, step_id = argument.partition("/")
    steps = {step.id: step for step in tutorials.load_tutorials().get(tutorial, [])}
    if step_id not in steps:
        raise KeyError(f"no step '{argument}' in docsgen/tutorials.yaml")
    run = _runs().get(tutorial, {}).get(step_id)
    depth = page_uri.count("/")
    picture_uri = "../" * depth + f"{GENERATED}/{tutorial}"
    return render.step_markdown(tutorial, steps[step_id], run, picture_uri)


def _cached(name: str, build: Any) -> str:
    if name not in _state:
        _state[name] = build()
    return _state[name]  # type: ignore[no-any-return]


def _config_table(argument: str) -> str:
    missing: list[str] = []
    tables = _cached("config", lambda: reference.config_tables(missing))
    for name in missing:
        log.warning(f"config key {name} has no description: add it to the class docstring's Attributes section")
    if argument not in tables:
        raise KeyError(f"no config table '{argument}' (known: {sorted(tables)})")
    return tables[argument]  # type: ignore[no-any-return]


def _replace(match: re.Match[str], page_uri: str) -> str:
    kind, argument = match.group(1), (match.group(2) or "").strip()
    try:
        if kind == "step":
            return _step(argument, page_uri)
        if kind == "table":
            path = (REPO_ROOT / argument).resolve()
            if REPO_ROOT not in path.parents or not path.is_file():
                raise FileNotFoundError(f"{argument} is not a file of the repository")
            return render.csv_table(path)
        if kind == "cli-reference":
            return _cached("cli", reference.cli_reference)
        if kind == "rest-reference":
            return _cached("rest", reference.rest_reference)
        if kind == "config-table":
            return _config_table(argument)
        if kind == "tutorial-timings":
            return render.steps_table(_runs())
    except Exception as error:  # one clear warning naming the page and marker; strict fails
        log.warning(f"{page_uri}: marker '{match.group(0).strip()}' could not be filled: {error}")
        return f'!!! failure "generated content missing"\n    {error}'
    return match.group(0)  # another HTML comment: left as it is


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Fill the markers and typeset the equations of one page."""
    page_uri = page.file.src_uri
    markdown = MARKER.sub(lambda match: "\n" + _replace(match, page_uri) + "\n", markdown)
    return EQUATION.sub(lambda match: render.equation_svg(" ".join(match.group(1).split())), markdown)
