"""``normadd audit``: show the audit log, verify its hash chain, export it for an auditor.

``normadd audit [LINE]`` shows rows as before (it is ``normadd audit show``); ``verify`` walks the
chain in the database (or in an exported file) and names the first row that no longer matches;
``export --format jsonl|csv`` writes every row with its ``prev_hash`` and ``row_hash``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from normadd.cli.common import console, friendly_errors, inert
from normadd.errors import NormaddError
from normadd.registry.audit_chain import ChainReport, verify_rows
from normadd.registry.database import redact
from normadd.registry.store import DEFAULT_DATABASE, Registry

DEFAULT_DB = str(DEFAULT_DATABASE)

DbOption = Annotated[
    str, typer.Option("--db", help="Registry: an SQLite file, or a postgresql://user@host:port/db URL.")
]
COLUMNS = ("id", "at", "line", "action", "who", "why", "details", "prev_hash", "row_hash")


class ShowByDefault(TyperGroup):
    """A group that sends arguments naming no subcommand to ``show``, so ``normadd audit LINE`` keeps working."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's own click Context
        """Put ``show`` in front of arguments that start with no subcommand name."""
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["show", *args]
        return super().parse_args(ctx, args)


def register(app: typer.Typer) -> None:
    """Add the ``audit`` group (show, verify, export) to the ``normadd`` app."""
    out = Console()
    audit_app = typer.Typer(
        cls=ShowByDefault, help="The audit log: show it, verify its hash chain, export it.", no_args_is_help=False
    )
    app.add_typer(audit_app, name="audit")

    @audit_app.command("show")
    @friendly_errors
    def show(
        line: Annotated[str | None, typer.Argument(help="Only this line.")] = None,
        limit: Annotated[int, typer.Option(help="At most this many rows, newest first.")] = 20,
        action: Annotated[
            str | None,
            typer.Option(
                help="line.create, normality.add/remove/activate/preview, threshold.set/clear, inspect, "
                "change.approve, access.denied…"
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
        db: DbOption = DEFAULT_DB,
    ) -> None:
        """Show the audit log: who changed what, when and why, and every inspection (the default command)."""
        with Registry(db) as registry:
            if line is not None:
                registry.line(line)
            entries = registry.audit(line, limit, action)
        if as_json:
            for entry in entries:
                typer.echo(json.dumps(entry.__dict__, sort_keys=True))
            return
        table = Table("id", "at", "line", "action", "who", "why", "details")
        for entry in entries:
            cells = (str(entry.id), entry.at, entry.line, entry.action, entry.who, entry.why, _summary(entry.details))
            table.add_row(*(inert(cell) for cell in cells))
        out.print(table)

    @audit_app.command("verify")
    @friendly_errors
    def verify(
        db: DbOption = DEFAULT_DB,
        file: Annotated[
            Path | None, typer.Option("--file", help="Verify an exported .jsonl or .csv file instead of the database.")
        ] = None,
        expect_head: Annotated[
            str | None,
            typer.Option("--expect-head", help="A row_hash recorded earlier: it must still be there."),
        ] = None,
    ) -> None:
        """Walk the hash chain from the first row; name the first row that no longer matches (exit code 1)."""
        if file is not None:
            report, hashes = _verify_file(file)
            source = str(file)
        else:
            with Registry(db) as registry:
                report = registry.verify_audit_chain()
                hashes = {row["row_hash"] for row in registry.audit_rows()} if expect_head else set()
            source = redact(db)
        if report.finding is not None:
            console.print(
                "[bold red]audit chain broken[/] "
                + inert(f"in {source}: {report.finding} ({report.rows} rows before it match)"),
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1)
        if expect_head and expect_head not in hashes:
            console.print(
                "[bold red]audit chain rewritten[/] "
                + inert(f"in {source}: the recorded head {expect_head} is not in it"),
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1)
        out.print(
            inert(
                f"audit chain ok: {report.rows} rows in {source}; head row {report.head_id} sha256 {report.head_hash}"
            ),
            highlight=False,
            soft_wrap=True,
        )

    @audit_app.command("export")
    @friendly_errors
    def export(
        output_format: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
        output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
        db: DbOption = DEFAULT_DB,
    ) -> None:
        """Write every audit row, oldest first, with prev_hash and row_hash (verify it with ``audit verify --file``)."""
        if output_format not in ("jsonl", "csv"):
            raise NormaddError(f"--format {output_format!r} is unknown: use jsonl or csv")
        with Registry(db) as registry:
            report = registry.verify_audit_chain()
            stream = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
            try:
                count = _write(registry.audit_rows(), output_format, stream)
            finally:
                if output:
                    stream.close()
        state = "chain ok" if report.ok else f"CHAIN BROKEN: {report.finding}"
        console.print(
            inert(f"exported {count} audit rows ({state}); head row {report.head_id} sha256 {report.head_hash}"),
            highlight=False,
            soft_wrap=True,
        )


def _write(rows: Iterator[dict[str, Any]], output_format: str, stream: Any) -> int:
    count = 0
    if output_format == "jsonl":
        for row in rows:
            stream.write(json.dumps({name: row[name] for name in COLUMNS}, sort_keys=True, ensure_ascii=False) + "\n")
            count += 1
        return count
    writer = csv.DictWriter(stream, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({**{name: row[name] for name in COLUMNS}, "details": _details_text(row["details"])})
        count += 1
    return count


def _details_text(details: Any) -> str:
    return details if isinstance(details, str) else json.dumps(details, sort_keys=True, ensure_ascii=False)


def _verify_file(path: Path) -> tuple[ChainReport, set[str]]:
    """The chain report of an exported file and its row hashes."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise NormaddError(f"cannot read {path}: {error.strerror}") from None
    try:
        if path.suffix == ".csv":
            rows: list[dict[str, Any]] = list(csv.DictReader(io.StringIO(text)))
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (ValueError, csv.Error) as error:
        raise NormaddError(f"{path} is not an audit export (.jsonl or .csv): {error}") from None
    return verify_rows(rows), {str(row.get("row_hash")) for row in rows}


def _summary(details: dict[str, Any]) -> str:
    if "flips" in details and "parts" in details:  # a preview
        return (
            f"previewed '{details.get('name')}' on {details['parts']} parts: {details['flips']} NG -> OK "
            f"(NG {details.get('ng_before')} -> {details.get('ng_after')})"
        )
    if "image_sha256" in details:
        verdicts = ""
        if details.get("verdict_before"):
            verdicts = f" ({details['verdict_before']} -> {details['verdict_after']})"
        return (
            f"{details.get('filename') or details['image_sha256'][:12]}: "
            f"{details['score_before']:.4f} -> {details['score_after']:.4f}{verdicts}"
        )
    # a proposal's summary says what its payload does; a threshold's score scale is long (`audit --json` shows it)
    hidden = ("phrases", "payload", "payload_sha256", "scale")
    return ", ".join(f"{k}={v}" for k, v in details.items() if k not in hidden and v is not None)
