"""Markdown that pages get at build time: CSV tables, typeset equations and recorded tutorial steps."""

from __future__ import annotations

import base64
import csv
import functools
import html
import io
from pathlib import Path, PurePosixPath

from docsgen.reference import cell, table
from docsgen.tutorials import Step, StepRun


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%x"))
    except ValueError:
        return False
    return True


def csv_table(path: Path) -> str:
    """A CSV file as a Markdown table; columns that hold only numbers are right-aligned."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise ValueError(f"{path} is empty")
    header, body = rows[0], rows[1:]
    numeric = [
        bool(body) and all(_is_number(row[i]) for row in body if i < len(row) and row[i]) for i in range(len(header))
    ]
    lines = ["| " + " | ".join(cell(name) for name in header) + " |"]
    lines.append("| " + " | ".join("---:" if right else "---" for right in numeric) + " |")
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in body]
    return "\n".join(lines)


@functools.cache
def equation_svg(tex: str) -> str:
    """A display equation typeset by matplotlib's mathtext as an inline SVG image (no JavaScript, no CDN)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import mathtext, rcParams
    from matplotlib.font_manager import FontProperties

    rcParams["svg.fonttype"] = "path"  # glyphs as paths: the SVG needs no font
    rcParams["mathtext.fontset"] = "cm"
    buffer = io.BytesIO()
    mathtext.math_to_image(f"${tex}$", buffer, format="svg", prop=FontProperties(size=17))
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return (
        f'<p class="equation"><img alt="{html.escape(tex)}" title="{html.escape(tex)}" '
        f'src="data:image/svg+xml;base64,{encoded}"></p>'
    )


def _console(command: str, output: str) -> str:
    lines = command.splitlines()
    shown = "\n".join(["$ " + lines[0], *lines[1:]])
    body = f"{shown}\n{output.rstrip()}" if output.strip() else shown
    fence = "````" if "```" in body else "```"
    return f"{fence}console\n{body}\n{fence}"


def step_markdown(tutorial: str, step: Step, run: StepRun | None, picture_uri: str) -> str:
    """A step as the reader sees it: the command (or file) and what it printed, then its pictures.

    ``picture_uri`` is the folder, relative to the page, where the step's pictures are published.
    """
    if step.write is not None:
        return f'```yaml title="{step.write}"\n{(step.content or "").rstrip()}\n```'
    if run is None:
        return f'!!! failure "not run"\n    Step `{tutorial}/{step.id}` has no recorded run.'
    output = run.output if step.show_output else ""
    parts = [_console(step.command(), output)]
    if not run.ok:
        parts.append(f'!!! failure "this step failed when the site was built"\n    exit code {run.returncode}')
    if step.pictures:
        figures = []
        for picture in step.pictures:
            name = PurePosixPath(picture).name
            figures.append(
                f'<figure markdown="span">![{name}]({picture_uri}/{name}){{ loading=lazy }}'
                f"<figcaption>{html.escape(name)}</figcaption></figure>"
            )
        parts.append('<div class="grid-figures" markdown>\n' + "\n".join(figures) + "\n</div>")
    return "\n\n".join(parts)


def steps_table(runs: dict[str, dict[str, StepRun]]) -> str:
    """How long each recorded step took when the site was built."""
    rows = [
        [f"`{tutorial}/{step_id}`", "ok" if run.ok else "failed", f"{run.seconds:.1f}"]
        for tutorial, steps in runs.items()
        for step_id, run in steps.items()
    ]
    return table(["step", "result", "seconds"], rows)
