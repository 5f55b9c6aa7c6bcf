"""Write an evaluation's tables (CSV), figures (matplotlib) and reports (``report.md``, ``report.html``).

``report.html`` is self-contained: CSS inline and every figure embedded as a base64 PNG, so it
opens offline and can be mailed as one file. ``report.md`` links the same figures under
``figures/``. Every number is in percent, the paper's unit.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from matplotlib.figure import Figure

from normadd.cache import atomic_write_bytes
from normadd.evaluation import metrics
from normadd.evaluation.protocol import relabel
from normadd.evaluation.runner import ClassEvaluation, EvaluationResult, Example
from normadd.images import load_image

RESULTS_COLUMNS = ("class", "group", "auroc_before", "auroc_after", "paper_before", "paper_after")
Cell = str | float | int | None


def _number(value: Cell, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _csv_value(value: Cell) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if isinstance(value, float) else str(value)


class Table:
    """A titled table rendered the same way to CSV, Markdown and HTML."""

    def __init__(self, title: str, columns: Sequence[str], rows: list[list[Cell]], note: str = "") -> None:
        self.title = title
        self.columns = list(columns)
        self.rows = rows
        self.note = note

    def to_csv(self) -> bytes:
        """CSV text (numbers with two decimals, empty cells for missing values)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows([[_csv_value(v) for v in row] for row in self.rows])
        return buffer.getvalue().encode()

    def to_markdown(self) -> str:
        """A GitHub-flavoured Markdown table with its title and note."""
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        if not self.rows:
            return "\n".join([*lines, "(no rows)"]) + "\n"
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("| " + " | ".join("---:" if numeric else "---" for numeric in self._numeric_columns()) + " |")
        lines += ["| " + " | ".join(_number(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def _numeric_columns(self) -> list[bool]:
        """Columns holding only numbers (or gaps) are right-aligned."""
        return [
            all(row[i] is None or isinstance(row[i], int | float) for row in self.rows)
            for i in range(len(self.columns))
        ]

    def to_html(self) -> str:
        """An HTML table with its title and note."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_number(v))}</td>" for v in row) + "</tr>" for row in self.rows
        )
        note = f"<p class='note'>{html.escape(self.note)}</p>" if self.note else ""
        if not self.rows:
            return f"<h3>{html.escape(self.title)}</h3>{note}<p>(no rows)</p>"
        return f"<h3>{html.escape(self.title)}</h3>{note}<table><tr>{head}</tr>{body}</table>"


def results_table(result: EvaluationResult) -> Table:
    """The paper's protocol, one row per (class, group): ``results.csv``."""
    rows: list[list[Cell]] = [
        [r.class_name, r.group, r.auroc_before, r.auroc_after, r.paper_before, r.paper_after] for r in result.rows
    ]
    return Table(
        "Image AUROC (%) per class and group: the paper's protocol",
        RESULTS_COLUMNS,
        rows,
        "Label 0 = good + the group, 1 = every other defect; after = the group's name added as normality.",
    )


def summary_table(result: EvaluationResult) -> Table:
    """Class figures (mean over groups) and the headline (mean over classes), ours and the paper's."""
    paper_means = result.paper_class_means
    rows: list[list[Cell]] = []
    for evaluation in result.classes:
        reported = paper_means.get(evaluation.name)
        rows.append(
            [
                evaluation.name,
                len(evaluation.rows),
                evaluation.mean_before,
                evaluation.mean_after,
                reported.auroc_before if reported else None,
                reported.auroc_after if reported else None,
            ]
        )
    paper_headline = result.paper_headline
    rows.append(
        [
            "mean over classes",
            len(result.rows),
            result.headline_before,
            result.headline_after,
            paper_headline.auroc_before if paper_headline else None,
            paper_headline.auroc_after if paper_headline else None,
        ]
    )
    return Table(
        "Class figures and headline (image AUROC %)",
        ("class", "groups", "auroc_before", "auroc_after", "paper_before", "paper_after"),
        rows,
        "Class = mean over its groups; headline = mean over classes. The paper's figures are its Table 2 class "
        "means (over the groups it reports) and their mean over the classes evaluated here; over all 14 classes "
        "that is 70.6 → 75.0 (Table 3 rounds the latter to 75.1).",
    )


def selectivity_table(result: EvaluationResult) -> Table:
    """Other groups against good images, before and after adding one group."""
    rows: list[list[Cell]] = [
        [
            s.class_name,
            s.added_group,
            s.other_group,
            s.auroc_before,
            s.auroc_after,
            None if s.auroc_before is None or s.auroc_after is None else s.auroc_after - s.auroc_before,
        ]
        for c in result.classes
        for s in c.selectivity
    ]
    return Table(
        "Selectivity: other defects still found after adding a group (image AUROC %)",
        ("class", "added_group", "other_group", "auroc_before", "auroc_after", "change"),
        rows,
        "Good images (0) against one other group's images (1): adding a normality should not hide other defects.",
    )


def pixel_table(result: EvaluationResult) -> Table:
    """Pixel AUROC and AUPRO on good images and the defects that stay anomalous."""
    rows: list[list[Cell]] = [
        [
            p.class_name,
            p.group,
            p.images,
            p.pixel_auroc_before,
            p.pixel_auroc_after,
            p.aupro_before,
            p.aupro_after,
        ]
        for c in result.classes
        for p in c.pixel
    ]
    return Table(
        "Pixel metrics on the defects that stay anomalous (%)",
        ("class", "added_group", "images", "pixel_auroc_before", "pixel_auroc_after", "aupro_before", "aupro_after"),
        rows,
        "Good images and every defect outside the added group, maps and masks at 256 × 256 (masks thresholded "
        "at 0.5); AUPRO integrated up to a false-positive rate of 0.3.",
    )


def several_table(result: EvaluationResult) -> Table:
    """Every group but one added at once."""
    rows: list[list[Cell]] = [
        [s.class_name, s.held_out, ", ".join(s.added), s.auroc_before, s.auroc_after]
        for c in result.classes
        for s in c.several
    ]
    return Table(
        "Several groups added at once: all groups but one (image AUROC %)",
        ("class", "held_out_group", "added_groups", "auroc_before", "auroc_after"),
        rows,
        "Every other group's name added together; label 0 = good + the added groups, 1 = the held-out group. "
        "Measured for classes with at least 3 groups.",
    )


DECISION_COLUMNS = (
    "class",
    "added_group",
    "threshold",
    "false_reject_target",
    "train_good_images",
    "good_images",
    "good_rejected_before",
    "good_rejected_after",
    "group_images",
    "group_accepted_before",
    "group_accepted_after",
    "other_images",
    "other_accepted_before",
    "other_accepted_after",
    "good_rejected_before_pct",
    "good_rejected_after_pct",
    "group_accepted_before_pct",
    "group_accepted_after_pct",
    "other_accepted_before_pct",
    "other_accepted_after_pct",
)


def _pct(count: int, total: int) -> float | None:
    return 100.0 * count / total if total else None


def decisions_table(result: EvaluationResult) -> Table:
    """``decisions.csv``: per class and added group, verdict counts before and after at the class threshold."""
    rows: list[list[Cell]] = []
    for evaluation in result.classes:
        for d in evaluation.decisions:
            rows.append(
                [
                    d.class_name,
                    d.added_group,
                    repr(d.threshold),  # full precision: a threshold rounded to 2 decimals decides otherwise
                    repr(d.false_reject),
                    d.train_good_images,
                    d.good_images,
                    d.good_rejected_before,
                    d.good_rejected_after,
                    d.group_images,
                    d.group_accepted_before,
                    d.group_accepted_after,
                    d.other_images,
                    d.other_accepted_before,
                    d.other_accepted_after,
                    _pct(d.good_rejected_before, d.good_images),
                    _pct(d.good_rejected_after, d.good_images),
                    _pct(d.group_accepted_before, d.group_images),
                    _pct(d.group_accepted_after, d.group_images),
                    _pct(d.other_accepted_before, d.other_images),
                    _pct(d.other_accepted_after, d.other_images),
                ]
            )
    return Table("Decisions", DECISION_COLUMNS, rows)


def decisions_view(result: EvaluationResult) -> Table:
    """The decisions as a person reads them: ``2/20 → 18/20`` per set of parts."""
    rows: list[list[Cell]] = [
        [
            d.class_name,
            d.added_group,
            f"{d.threshold:.4g}",
            f"{d.good_rejected_before}/{d.good_images} → {d.good_rejected_after}/{d.good_images}",
            f"{d.group_accepted_before}/{d.group_images} → {d.group_accepted_after}/{d.group_images}",
            f"{d.other_accepted_before}/{d.other_images} → {d.other_accepted_after}/{d.other_images}",
        ]
        for evaluation in result.classes
        for d in evaluation.decisions
    ]
    target = next((d.false_reject for c in result.classes for d in c.decisions), None)
    note = (
        f"Threshold per class at a {100 * target:g} % false-reject rate on train/good (NG when the score is above "
        "it); parts of the added group accepted = the yield the normality recovers; other defects accepted = escapes."
        if target is not None
        else "No decisions: no class had train/good images to calibrate a threshold on."
    )
    return Table(
        "Decisions: what the line would accept, before → after adding each group",
        ("class", "added_group", "threshold", "good parts rejected", "added group accepted", "other defects accepted"),
        rows,
        note,
    )


def decisions_figure(evaluation: ClassEvaluation) -> bytes:
    """One panel per added group: accepted share of each set of parts, before and after, with counts."""
    count = len(evaluation.decisions)
    figure = Figure(figsize=(5.4 * max(count, 1), 2.8), layout="constrained")
    for k, d in enumerate(evaluation.decisions):
        axes = figure.add_subplot(1, max(count, 1), k + 1)
        names = ["good parts", f"{d.added_group} (added)", "other defects"]
        totals = [d.good_images, d.group_images, d.other_images]
        accepted = {
            "before": [d.good_images - d.good_rejected_before, d.group_accepted_before, d.other_accepted_before],
            "after": [d.good_images - d.good_rejected_after, d.group_accepted_after, d.other_accepted_after],
        }
        positions = range(len(names))
        for offset, label, colour in ((-0.2, "before", "#9aa0ac"), (0.2, "after", "#1b7f3b")):
            shares = [100.0 * a / t if t else 0.0 for a, t in zip(accepted[label], totals, strict=True)]
            bars = axes.barh([p + offset for p in positions], shares, height=0.38, color=colour, label=label)
            for bar, a, t in zip(bars, accepted[label], totals, strict=True):
                axes.text(bar.get_width() + 1, bar.get_y() + 0.19, f"{a}/{t}", va="center", fontsize=7)
        axes.set_yticks(list(positions), names, fontsize=8)
        axes.invert_yaxis()
        axes.set_xlim(0, 118)
        axes.set_xlabel("accepted (OK) %", fontsize=8)
        axes.set_title(f"{evaluation.name}: +{d.added_group} (threshold {d.threshold:.3g})", fontsize=9)
        axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    return _png(figure)


def cost_table(result: EvaluationResult) -> Table:
    """What the run computed."""
    cost = result.cost
    rows: list[list[Cell]] = [
        ["test images", cost.images],
        ["train/good images scored for the thresholds", cost.calibration_images],
        ["detector passes (images)", cost.detector_passes],
        ["CLIP passes (images)", cost.clip_passes],
        ["group texts encoded as normalities", cost.group_texts],
        ["prompts sent through the text tower (rest from the text cache)", cost.prompts_encoded],
        ["feature cache hits / misses", f"{cost.cache_hits} / {cost.cache_misses}"],
        ["feature cache record per image (KiB)", round(cost.record_bytes / 1024, 1)],
        ["feature cache written (MiB)", round(cost.cache_bytes_written / 2**20, 2)],
        ["wall time (s)", round(cost.seconds, 1)],
    ]
    return Table("Cost of this run", ("item", "value"), rows)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def roc_figure(evaluation: ClassEvaluation) -> bytes:
    """ROC curves before and after, one panel per group (the paper's labels)."""
    count = len(evaluation.groups)
    figure = Figure(figsize=(3.2 * count, 3.2))
    for k, group in enumerate(evaluation.groups):
        axes = figure.add_subplot(1, count, k + 1)
        labels = relabel(evaluation.defect_types, group.defect_types)
        for name, scores, style in (
            ("before", evaluation.scores_before, "--"),
            ("after", evaluation.scores_after[:, k], "-"),
        ):
            points = metrics.roc_points(labels, scores)
            if points is not None:
                value = metrics.image_auroc(labels, scores)
                axes.plot(*points, style, label=f"{name} {100 * (value or 0):.1f}")
        axes.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
        axes.set_title(f"{evaluation.name}: +{group.name}", fontsize=9)
        axes.set_xlabel("false-positive rate", fontsize=8)
        axes.set_ylabel("true-positive rate", fontsize=8)
        if axes.get_legend_handles_labels()[1]:  # no ROC when the group has one label only
            axes.legend(fontsize=7, loc="lower right")
        else:
            axes.text(0.5, 0.5, "no ROC: one label only", ha="center", fontsize=8)
    return _png(figure)


def examples_figure(examples: list[Example], random_weights: bool) -> bytes:
    """Image (mask outlined), map before, suppression and map after, one row per example."""
    figure = Figure(figsize=(9.6, 2.5 * max(len(examples), 1)))
    for row, example in enumerate(examples):
        size = example.before_map.shape[-1]
        picture = load_image(example.image_path, size, example.resize).permute(1, 2, 0).numpy()
        vmax = float(example.before_map.max()) or 1.0
        panels = (
            (picture, f"{example.defect_type}/{example.image_path.name}", None),
            (example.before_map, "before", vmax),
            (example.suppression_map, f"suppression '{example.added_group}'", 1.0),
            (example.after_map, f"after +{example.added_group}", vmax),
        )
        for column, (data, title, top) in enumerate(panels):
            axes = figure.add_subplot(len(examples), 4, 4 * row + column + 1)
            if top is None:
                axes.imshow(data)
                if example.mask is not None and example.mask.any():
                    axes.contour(example.mask, levels=[0.5], colors="lime", linewidths=0.8)
            else:
                axes.imshow(data, cmap="jet", vmin=0.0, vmax=top)
            axes.set_title(title, fontsize=8)
            axes.axis("off")
    if random_weights:
        figure.suptitle("RANDOM weights: the maps are not meaningful", color="red", fontsize=10)
    return _png(figure)


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
th { background: #f0f0f0; }
.note { color: #555; font-size: 0.9em; }
.warning { color: #b00; font-weight: bold; }
img { max-width: 100%; }
"""


def write_report(result: EvaluationResult, out: Path, data: Path) -> dict[str, Path]:
    """Write every CSV, figure and both reports to ``out``; returns the paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    figures_dir = out / "figures"
    figures_dir.mkdir(exist_ok=True)
    tables = {
        "results": results_table(result),
        "summary": summary_table(result),
        "selectivity": selectivity_table(result),
        "pixel": pixel_table(result),
        "several": several_table(result),
        "cost": cost_table(result),
        "decisions": decisions_table(result),
    }
    view = decisions_view(result)
    written: dict[str, Path] = {}
    for name, table in tables.items():
        written[name] = out / f"{name}.csv"
        atomic_write_bytes(written[name], table.to_csv())

    figures: list[tuple[str, str, bytes]] = []
    for evaluation in result.classes:
        figures.append((f"roc_{evaluation.name}.png", f"ROC curves, {evaluation.name}", roc_figure(evaluation)))
        if evaluation.examples:
            picture = examples_figure(evaluation.examples, result.random_weights)
            figures.append((f"examples_{evaluation.name}.png", f"Examples, {evaluation.name}", picture))
        if evaluation.decisions:
            picture = decisions_figure(evaluation)
            figures.append((f"decisions_{evaluation.name}.png", f"Decisions, {evaluation.name}", picture))
    for filename, _, picture in figures:
        atomic_write_bytes(figures_dir / filename, picture)

    title = "normadd evaluation"
    header = [
        f"Data: {data}",
        f"Detector: {result.detector}: {result.model}",
        f"Classes: {', '.join(c.name for c in result.classes)}",
    ]
    warning = (
        "RANDOM weights: these numbers test the pipeline and mean nothing about accuracy."
        if result.random_weights
        else ""
    )
    ordered = ["summary", "results", "selectivity", "pixel", "several"]

    markdown = [f"# {title}", "", *[f"- {line}" for line in header], ""]
    if warning:
        markdown += [f"**{warning}**", ""]
    markdown += [tables[name].to_markdown() for name in ordered]
    markdown += [view.to_markdown()]
    markdown += ["## Figures", ""]
    markdown += [f"![{caption}](figures/{filename})\n" for filename, caption, _ in figures]
    markdown += [tables["cost"].to_markdown()]
    if result.notes:
        markdown += ["## Notes", "", *[f"- {note}" for note in result.notes], ""]
    written["report.md"] = out / "report.md"
    atomic_write_bytes(written["report.md"], "\n".join(markdown).encode())

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"]
    parts.append(f"<style>{HTML_STYLE}</style></head><body><h1>{title}</h1><ul>")
    parts += [f"<li>{html.escape(line)}</li>" for line in header]
    parts.append("</ul>")
    if warning:
        parts.append(f"<p class='warning'>{html.escape(warning)}</p>")
    parts += [tables[name].to_html() for name in ordered]
    parts.append(view.to_html())
    parts.append("<h2>Figures</h2>")
    for _, caption, picture in figures:
        encoded = base64.b64encode(picture).decode()
        parts.append(
            f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append(tables["cost"].to_html())
    if result.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in result.notes) + "</ul>")
    parts.append("</body></html>")
    written["report.html"] = out / "report.html"
    atomic_write_bytes(written["report.html"], "".join(parts).encode())

    record = {
        "data": str(data),
        "detector": result.detector,
        "model": result.model,
        "random_weights": result.random_weights,
        "headline": {"auroc_before": result.headline_before, "auroc_after": result.headline_after},
        "cost": asdict(result.cost),
        "notes": result.notes,
        "groups": {c.name: {g.name: list(g.defect_types) for g in c.groups} for c in result.classes},
    }
    written["run.json"] = out / "run.json"
    atomic_write_bytes(written["run.json"], json.dumps(record, indent=2).encode())
    return written
