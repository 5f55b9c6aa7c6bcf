"""Staged and expiring normalities in the registry: every state change is audited, bad input changes nothing.

The ``registry`` fixture runs every test on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from normadd.errors import NormaddError
from normadd.registry.errors import DuplicateNormalityError, NormalityNotFoundError, RegistryError
from normadd.registry.schedule import parse_until
from normadd.registry.store import LineRecord, NormalityRecord, Registry

START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(registry_location: str, clock: FakeClock) -> Registry:
    store = Registry(registry_location, clock=clock)
    store.create_line(LineRecord("line-1", "bottle", backbone="tiny-random"), "alice")
    return store


def _scratch(state: str = "active", until: datetime | None = None) -> NormalityRecord:
    return NormalityRecord(
        "scratch", "scratch", 1.0, ["scratched bottle"], b"\x00" * 16, "tiny-random|x", state=state,
        until=until.isoformat() if until else None,
    )


def _snapshot(registry: Registry) -> tuple[object, ...]:
    everything = registry.normalities("line-1", ("active", "staged", "expired"))
    return tuple((n.name, n.state, n.until) for n in everything), registry.audit("line-1", limit=1000)[0].id


def test_a_staged_normality_is_stored_but_does_not_apply_until_activated(registry: Registry) -> None:
    registry.add_normality("line-1", _scratch("staged"), "alice", "customer asked")
    assert registry.normalities("line-1") == []
    assert [n.state for n in registry.normalities("line-1", ("staged",))] == ["staged"]
    revision = registry.revision("line-1")
    activated = registry.activate_normality("line-1", "scratch", "bob", "supplier confirmed")
    assert activated.state == "active" and [n.name for n in registry.normalities("line-1")] == ["scratch"]
    assert registry.revision("line-1") == revision + 1
    add, activate = reversed(registry.audit("line-1", limit=2))
    assert (add.action, add.details["state"]) == ("normality.add", "staged")
    assert (activate.action, activate.who, activate.why) == ("normality.activate", "bob", "supplier confirmed")


@pytest.mark.parametrize(
    ("setup", "name", "error", "words"),
    [
        ("none", "dent", NormalityNotFoundError, "no normality named 'dent'"),
        ("active", "scratch", RegistryError, "already active"),
        ("expired", "scratch", RegistryError, "expired"),
    ],
)
def test_activating_an_unknown_active_or_expired_normality_changes_nothing(
    registry: Registry, clock: FakeClock, setup: str, name: str, error: type[Exception], words: str
) -> None:
    if setup == "active":
        registry.add_normality("line-1", _scratch(), "alice")
    if setup == "expired":
        registry.add_normality("line-1", _scratch("active", START + timedelta(hours=1)), "alice")
        clock.now += timedelta(hours=2)
        registry.expire_due("line-1")
    before = _snapshot(registry)
    with pytest.raises(error, match=words):
        registry.activate_normality("line-1", name, "bob")
    assert _snapshot(registry) == before


def test_a_staged_normality_whose_until_passed_cannot_be_activated(registry: Registry, clock: FakeClock) -> None:
    registry.add_normality("line-1", _scratch("staged", START + timedelta(days=1)), "alice")
    clock.now += timedelta(days=2)
    before = _snapshot(registry)
    with pytest.raises(RegistryError, match="has passed"):
        registry.activate_normality("line-1", "scratch", "bob")
    assert _snapshot(registry) == before


def test_expiry_is_audited_once_and_the_name_can_be_added_again(registry: Registry, clock: FakeClock) -> None:
    until = START + timedelta(days=14)
    registry.add_normality("line-1", _scratch("active", until), "alice", "until the supplier's fix lands")
    assert registry.expire_due("line-1") == []  # not due yet
    clock.now = until + timedelta(seconds=1)
    expired = registry.expire_due("line-1")
    assert [(n.name, n.state) for n in expired] == [("scratch", "expired")]
    assert registry.normalities("line-1") == [] and registry.expire_due("line-1") == []
    entry = registry.audit("line-1", limit=1)[0]
    assert entry.action == "normality.expire" and entry.details["until"] == until.isoformat()
    assert len(registry.audit("line-1", action="normality.expire")) == 1
    registry.add_normality("line-1", _scratch(), "alice", "renewed")
    assert registry.audit("line-1", limit=1)[0].details["replaces_expired"] is True
    with pytest.raises(DuplicateNormalityError, match="already active"):
        registry.add_normality("line-1", _scratch("staged"), "alice")


def test_an_until_in_the_past_is_refused_and_changes_nothing(registry: Registry) -> None:
    before = _snapshot(registry)
    with pytest.raises(ValueError, match="has passed"):
        registry.add_normality("line-1", _scratch("active", START - timedelta(minutes=1)), "alice")
    assert _snapshot(registry) == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-15", "2026-12-15T00:00:00.000+00:00"),
        ("2026-12-15T10:30Z", "2026-12-15T10:30:00.000+00:00"),
        ("2026-12-15T10:30:00+02:00", "2026-12-15T08:30:00.000+00:00"),
    ],
)
def test_until_is_read_as_utc_iso_8601(text: str, expected: str) -> None:
    assert parse_until(text, START) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [("next friday", "not an ISO 8601 time"), ("2026-11-30", "not in the future"), ("", "not an ISO 8601")],
)
def test_a_bad_until_is_one_clear_line(text: str, words: str) -> None:
    with pytest.raises(NormaddError, match=words):
        parse_until(text, START)
