"""``normadd change`` (pending approvals) and ``normadd key`` (API keys with scopes and hashed secrets)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from normadd.cli.common import admin_notice, friendly_errors, inert
from normadd.cli.line import default_who
from normadd.registry import approvals
from normadd.registry.store import DEFAULT_DATABASE, Registry

DEFAULT_DB = str(DEFAULT_DATABASE)

DbOption = Annotated[
    str, typer.Option("--db", help="Registry: an SQLite file, or a postgresql://user@host:port/db URL.")
]
WhoOption = Annotated[str | None, typer.Option("--who", help="Who decides (default: $USER).")]


def register(app: typer.Typer) -> None:
    """Add the ``change`` and ``key`` commands to the ``normadd`` app."""
    out = Console()
    change_app = typer.Typer(help="Changes waiting for a second person's approval.", no_args_is_help=True)
    key_app = typer.Typer(help="API keys of the service: scopes and hashed secrets.", no_args_is_help=True)
    app.add_typer(change_app, name="change")
    app.add_typer(key_app, name="key")

    @change_app.command("list")
    @friendly_errors
    def change_list(
        line: Annotated[str | None, typer.Argument(help="Only this line.")] = None,
        status: Annotated[str, typer.Option(help="pending, approved, rejected, expired or all.")] = "pending",
        db: DbOption = DEFAULT_DB,
    ) -> None:
        """List pending changes (or decided ones by --status); past-due ones are expired first."""
        with Registry(db) as registry:
            if line is not None:
                registry.line(line)
            found = approvals.changes(registry, line, None if status == "all" else status)
        table = Table("id", "line", "change", "why", "proposed by", "expires", "status", "decided by")
        for change in found:
            cells = (
                str(change.id),
                change.line,
                change.summary,
                change.why,
                change.proposed_by,
                change.expires_at,
                change.status,
                change.decided_by or "-",
            )
            table.add_row(*(inert(cell) for cell in cells))
        out.print(table)

    @change_app.command("approve")
    @friendly_errors
    def change_approve(
        change_id: Annotated[int, typer.Argument(help="The change's id (normadd change list).")],
        db: DbOption = DEFAULT_DB,
        who: WhoOption = None,
        why: Annotated[str, typer.Option("--why", help="Why, for the audit log.")] = "",
    ) -> None:
        """Apply another person's pending change (the proposer cannot approve their own)."""
        admin_notice(db)
        with Registry(db) as registry:
            change = approvals.approve(registry, change_id, who or default_who(), why)
        out.print(
            inert(
                f"approved change {change.id} on line '{change.line}' ({change.summary}), proposed by "
                f"{change.proposed_by}, approved by {change.decided_by}"
            ),
            highlight=False,
        )

    @change_app.command("reject")
    @friendly_errors
    def change_reject(
        change_id: Annotated[int, typer.Argument(help="The change's id (normadd change list).")],
        why: Annotated[str, typer.Option("--why", help="Why it is rejected (required, audited).")],
        db: DbOption = DEFAULT_DB,
        who: WhoOption = None,
    ) -> None:
        """Close a pending change without applying it."""
        admin_notice(db)
        with Registry(db) as registry:
            change = approvals.reject(registry, change_id, who or default_who(), why)
        out.print(
            inert(f"rejected change {change.id} on line '{change.line}' ({change.summary}): {why}"), highlight=False
        )

    @key_app.command("new")
    @friendly_errors
    def key_new(
        name: Annotated[str, typer.Argument(help="Key name, written to the audit log (e.g. station-1, alice).")],
        scopes: Annotated[
            str, typer.Option(help="Comma-separated: inspect, preview, change, approve, audit, admin.")
        ] = "inspect",
    ) -> None:
        """Make a random secret and print it once, with the scrypt hash the service config keeps."""
        from normadd.serve.authority import hash_secret, new_secret, parse_scopes

        chosen = sorted(parse_scopes(scopes, name))
        secret = new_secret()
        typer.echo(f"secret (give it to {name}; it is not stored anywhere): {secret}")
        typer.echo("service config:")
        entry = f'{{secret_hash: "{hash_secret(secret)}", scopes: [{", ".join(chosen)}]}}'
        typer.echo(f"  api_keys:\n    {name}: {entry}")
