"""The generated parts of the documentation: they follow the code they are generated from."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from typer.main import get_command

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # docsgen sits at the repository root, beside src/
    sys.path.insert(0, str(REPO_ROOT))

from docsgen import reference, render, tutorials  # noqa: E402
from docsgen.hooks import MARKER  # noqa: E402


def _command_paths(command: Any, prefix: str) -> list[str]:
    paths = [prefix]
    if hasattr(command, "commands"):  # a group (typer ships its own copy of click: no isinstance)
        for name, child in command.commands.items():
            paths += _command_paths(child, f"{prefix} {name}")
    return paths


def test_cli_reference_lists_every_command_and_option_of_the_app() -> None:
    from normadd.cli import app

    text = reference.cli_reference()
    for path in _command_paths(get_command(app), "normadd"):
        assert f"## `{path}`" in text
    assert "`--strength`" in text and "`--add`, `-a`" in text


def test_every_config_key_has_a_description_in_its_docstring() -> None:
    from normadd.config import LineConfig

    missing: list[str] = []
    tables = reference.config_tables(missing)
    assert missing == []
    for item in dataclasses.fields(LineConfig):
        assert f"`{item.name}`" in tables["LineConfig"]


def test_a_field_without_a_description_is_reported() -> None:
    @dataclasses.dataclass
    class Example:
        """Example.

        Attributes:
            documented: Has a line.
        """

        documented: int = 1
        forgotten: str = "x"

    missing: list[str] = []
    table = reference.dataclass_table(Example, missing=missing)
    assert missing == ["Example.forgotten"]
    assert "| `documented` | int | `1` | Has a line. |" in table


def test_rest_reference_has_every_path_of_the_openapi_schema() -> None:
    schema = reference.openapi_schema()
    text = reference.rest_reference(schema)
    for path, methods in schema["paths"].items():
        for method in methods:
            assert f"### `{method.upper()} {path}`" in text


def test_csv_marker_renders_the_file_with_numbers_right_aligned(tmp_path: Path) -> None:
    csv_file = tmp_path / "bench.csv"
    csv_file.write_text("config,images/s,overhead\ndetector alone,144.20,+0.0%\n+1 normality,110.44,+30.6%\n")
    assert render.csv_table(csv_file).splitlines() == [
        "| config | images/s | overhead |",
        "| --- | ---: | ---: |",
        "| detector alone | 144.20 | +0.0% |",
        "| +1 normality | 110.44 | +30.6% |",
    ]
    match = MARKER.search("text\n<!-- table: benchmarks/results/bench_service.csv -->\nmore")
    assert match is not None and match.group(1, 2) == ("table", "benchmarks/results/bench_service.csv")


def test_the_page_shows_the_command_the_test_runs_with_the_page_port() -> None:
    serve = next(step for step in tutorials.load_tutorials()["run-a-line"] if step.background)
    assert "--port 8000" in serve.command()
    assert "--port 8123" in serve.command(8123)
    run = tutorials.StepRun("serve", 0, "", 0.0)
    assert "$ NORMADD_API_KEYS=" in render.step_markdown("run-a-line", serve, run, "generated/run-a-line")


def test_equations_are_typeset_to_svg_without_javascript() -> None:
    html = render.equation_svg(r"A_{\mathrm{final}} = A \odot \prod_k (1 - s_k A_{\mathrm{sup},k})")
    assert html.startswith('<p class="equation"><img alt="A_{\\mathrm{final}}')
    assert "data:image/svg+xml;base64," in html and "<script" not in html


def test_readme_keeps_the_two_quickstart_commands_and_links_only_to_pages_that_exist() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in quickstart.strip().splitlines()] == ["make demo", "make test"]
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links, "the README links into the documentation"
    for link in links:
        assert (REPO_ROOT / link).is_file(), f"README links to {link}, which does not exist"
