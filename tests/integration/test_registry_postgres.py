"""The registry on a real PostgreSQL server: a CLI round trip, passwords kept out of every message,
and each way of pointing at the wrong database answered in one line (CLI exit code 2, service
start refused) that names host, port and database and changes nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from helpers.postgres import free_port
from helpers.registry_backends import raw_rows
from normadd.cli import app
from normadd.errors import NormaddError
from normadd.registry.database import redact
from normadd.registry.schema import SCHEMA_VERSION
from normadd.registry.store import LineRecord, Registry
from normadd.serve.settings import ServiceConfig

runner = CliRunner()
PASSWORD = "s3cret-Pa55"


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.fixture
def role(postgres_cluster: Any, postgres_url: str) -> Iterator[str]:
    """A role that must give its password (``PASSWORD``) over TCP, owning a fresh database."""
    name = f"r_{postgres_url.rsplit('/', 1)[1]}"
    postgres_cluster.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{PASSWORD}'")
    postgres_cluster.execute(f"ALTER DATABASE {postgres_url.rsplit('/', 1)[1]} OWNER TO {name}")
    yield name
    postgres_cluster.execute(f"DROP DATABASE IF EXISTS {postgres_url.rsplit('/', 1)[1]} WITH (FORCE)")
    postgres_cluster.execute(f"DROP ROLE IF EXISTS {name}")


def test_a_line_is_created_changed_and_verified_through_the_cli_on_postgresql(postgres_url: str) -> None:
    code, out = _run("line", "create", "line-1", "-c", "bottle", "--backbone", "tiny-random", "--db", postgres_url)
    assert code == 0, out
    code, out = _run("normality", "add", "line-1", "scratch", "--strength", "0.5", "--db", postgres_url, "--who", "al")
    assert code == 0, out
    code, out = _run("normality", "list", "line-1", "--db", postgres_url)
    assert code == 0 and "scratch" in out and "al" in out, out
    code, out = _run("audit", "verify", "--db", postgres_url)
    assert code == 0 and "2 rows" in out, out
    actions = [row["action"] for row in raw_rows(postgres_url, "SELECT action FROM audit_log ORDER BY id")]
    assert actions == ["line.create", "normality.add"]


def test_the_password_comes_from_the_url_or_pgpassword_and_is_never_shown(
    postgres_cluster: Any, postgres_url: str, role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    with_password = postgres_cluster.url(database, role, PASSWORD)
    code, out = _run("line", "create", "line-1", "-c", "bottle", "--backbone", "tiny-random", "--db", with_password)
    assert code == 0 and PASSWORD not in out and "***" in out, out
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    with Registry(postgres_cluster.url(database, role)) as registry:  # libpq reads PGPASSWORD
        assert [line.name for line in registry.lines()] == ["line-1"]


def test_wrong_credentials_are_one_line_without_the_password(
    postgres_cluster: Any, postgres_url: str, role: str
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    wrong = postgres_cluster.url(database, role, "not-" + PASSWORD)
    code, out = _run("normality", "list", "line-1", "--db", wrong)
    message = _one_line(out)
    assert code == 2 and "refused the credentials" in message and f"'{database}'" in message, message
    assert PASSWORD not in out and f"127.0.0.1:{postgres_cluster.port}" in message
    missing_role = postgres_cluster.url(database, "nobody", PASSWORD)
    code, out = _run("normality", "list", "line-1", "--db", missing_role)
    assert code == 2 and PASSWORD not in out, out
    assert re.search("refused the credentials|has no user", _one_line(out)), out


def test_an_unreachable_server_is_one_line_naming_host_port_and_database(postgres_cluster: Any) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://plant:{PASSWORD}@127.0.0.1:{port}/line_registry"
    with pytest.raises(NormaddError) as raised:
        Registry(url, timeout=3)
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message and "'line_registry'" in message and "cannot be reached" in message
    assert PASSWORD not in message and "\n" not in message
    code, out = _run("line", "show", "line-1", "--db", url)
    assert code == 2 and PASSWORD not in out and "cannot be reached" in _one_line(out), out


def test_a_database_that_does_not_exist_is_one_line(postgres_cluster: Any) -> None:
    code, out = _run("line", "show", "line-1", "--db", postgres_cluster.url("no_such_db"))
    assert code == 2 and "'no_such_db'" in _one_line(out) and "does not exist" in out, out


def test_a_database_at_a_newer_schema_is_refused_by_the_cli_and_the_service(postgres_url: str, tmp_path: Path) -> None:
    with Registry(postgres_url) as registry:
        registry.create_line(LineRecord("bottle", "bottle", backbone="tiny-random"), "alice")
    raw_rows(postgres_url, "UPDATE normadd_schema SET version = ?", SCHEMA_VERSION + 1)
    code, out = _run("line", "show", "bottle", "--db", postgres_url)
    assert code == 2 and "upgrade normadd" in _one_line(out) and f"version {SCHEMA_VERSION + 1}" in out, out

    config = tmp_path / "line.yaml"
    config.write_text(
        f"class_name: bottle\nbackbone: tiny-random\ndatabase: {postgres_url}\n"
        "service: {api_keys: {station-1: secret-1}}\n"
    )
    assert ServiceConfig.from_yaml(config).database == postgres_url  # a URL is kept, not made relative to the file
    code, out = _run("serve", "--config", str(config), "--port", str(free_port()))
    assert code == 2 and "upgrade normadd" in _one_line(out), out
    assert raw_rows(postgres_url, "SELECT version FROM normadd_schema") == [{"version": SCHEMA_VERSION + 1}]


def test_the_service_refuses_to_start_on_an_unreachable_database_in_one_line(tmp_path: Path) -> None:
    from normadd.serve.app import create_app

    config = tmp_path / "line.yaml"
    url = f"postgres://svc:{PASSWORD}@127.0.0.1:{free_port()}/plant"
    config.write_text(f"class_name: bottle\ndatabase: {url}\nservice: {{api_keys: {{station-1: secret-1}}}}\n")
    with pytest.raises(NormaddError, match="cannot be reached") as raised:
        create_app(config)
    assert PASSWORD not in str(raised.value) and "'plant'" in str(raised.value) and "\n" not in str(raised.value)
    code, out = _run("serve", "--config", str(config), "--port", str(free_port()))
    assert code == 2 and PASSWORD not in out and "cannot be reached" in _one_line(out), out


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://u@h/db?password=pw&sslmode=require", "postgres://u@h/db?password=***&sslmode=require"),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        ("/var/lib/normadd.db", "/var/lib/normadd.db"),
    ],
)
def test_redact_hides_every_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_dropped_connection_fails_one_request_in_one_line_and_the_next_reconnects(
    postgres_cluster: Any, postgres_url: str
) -> None:
    with Registry(postgres_url) as registry:
        registry.create_line(LineRecord("line-1", "bottle", backbone="tiny-random"), "alice")
        database = postgres_url.rsplit("/", 1)[1]
        postgres_cluster.execute(  # what a server restart does to the open connection
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' "
            "AND pid <> pg_backend_pid()"
        )
        with pytest.raises(NormaddError) as raised:
            registry.lines()
        assert str(raised.value).startswith(f"registry {postgres_url}:") and "\n" not in str(raised.value)
        assert [line.name for line in registry.lines()] == ["line-1"]
        registry.record("line-1", "note", "alice")
        assert registry.verify_audit_chain().ok
