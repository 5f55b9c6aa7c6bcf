"""Two-person approval in the registry: a change applies only when someone else approves it in time.

The ``registry`` fixture runs every test on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from helpers.registry_backends import raw_rows
from normadd.decisions import DecisionError
from normadd.registry import approvals
from normadd.registry.approvals import ChangeNotFoundError, ChangeNotPendingError, SelfApprovalError
from normadd.registry.errors import RegistryError
from normadd.registry.store import LineRecord, NormalityRecord, Registry, ThresholdRecord


class FakeClock:
    """A clock the test moves by hand (no sleeping)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(registry_location: str, clock: FakeClock) -> Registry:
    store = Registry(registry_location, clock=clock)
    settings = {"approval": "required", "approval_expires_hours": 8}
    store.create_line(LineRecord("line-1", "bottle", backbone="tiny-random", settings=settings), "admin")
    return store


def _propose_scratch(registry: Registry, who: str = "alice") -> approvals.PendingChange:
    record = NormalityRecord("scratch", "scratch", 0.5, ["scratched bottle"], b"\x01\x02\x03\x04", "tiny|x")
    payload = approvals.normality_payload(record)
    return approvals.propose(registry, "line-1", "normality.add", payload, "add 'scratch'", who, "customer accepts")


def test_a_proposed_change_waits_and_applies_when_another_person_approves(registry: Registry) -> None:
    change = _propose_scratch(registry)
    assert approvals.approval_required(registry, "line-1")
    assert registry.normalities("line-1") == []
    assert [c.id for c in approvals.changes(registry, "line-1")] == [change.id]
    with pytest.raises(SelfApprovalError, match="cannot approve"):
        approvals.approve(registry, change.id, "alice")
    assert registry.normalities("line-1") == []
    decided = approvals.approve(registry, change.id, "bob", "checked the phrases")
    assert (decided.status, decided.decided_by) == ("approved", "bob")
    [active] = registry.normalities("line-1")
    assert (active.name, active.added_by, active.embedding) == ("scratch", "alice", b"\x01\x02\x03\x04")
    rows = [(e.action, e.who) for e in reversed(registry.audit("line-1"))]
    assert rows == [
        ("line.create", "admin"),
        ("change.propose", "alice"),
        ("change.refused", "alice"),
        ("normality.add", "alice"),
        ("change.approve", "bob"),
    ]
    assert registry.audit("line-1", action="change.approve")[0].details["proposed_by"] == "alice"
    with pytest.raises(ChangeNotPendingError, match="already approved by bob"):
        approvals.approve(registry, change.id, "carol")
    assert registry.verify_audit_chain().ok


def test_a_rejected_change_never_applies_and_keeps_its_reason(registry: Registry) -> None:
    change = _propose_scratch(registry)
    with pytest.raises(ValueError, match="needs a reason"):
        approvals.reject(registry, change.id, "bob", " ")
    rejected = approvals.reject(registry, change.id, "bob", "scratches on the neck are not acceptable")
    assert rejected.status == "rejected" and rejected.decision_why.startswith("scratches")
    with pytest.raises(ChangeNotPendingError):
        approvals.approve(registry, change.id, "bob")
    assert registry.normalities("line-1") == []
    entry = registry.audit("line-1", action="change.reject")[0]
    assert (entry.who, entry.details["proposed_by"]) == ("bob", "alice")


def test_a_change_expires_after_the_lines_time_and_never_applies(registry: Registry, clock: FakeClock) -> None:
    change = _propose_scratch(registry)
    clock.now += timedelta(hours=7, minutes=59)
    assert [c.id for c in approvals.changes(registry, "line-1")] == [change.id]
    clock.now += timedelta(minutes=1)
    with pytest.raises(ChangeNotPendingError, match="already expired"):
        approvals.approve(registry, change.id, "bob")
    assert registry.normalities("line-1") == []
    assert approvals.changes(registry, "line-1") == []
    assert [c.status for c in approvals.changes(registry, "line-1", status=None)] == ["expired"]
    assert registry.audit("line-1", action="change.expire")[0].details["change_id"] == change.id


def test_removal_goes_through_approval_too_and_unknown_ids_are_named(registry: Registry) -> None:
    _propose_scratch(registry)
    approvals.approve(registry, 1, "bob")
    refused = r"no normality named 'dent' on line 'line-1' \(active: scratch; staged: none\)"
    with pytest.raises(Exception, match=refused):
        approvals.propose(registry, "line-1", "normality.remove", {"name": "dent"}, "remove dent", "bob")
    change = approvals.propose(registry, "line-1", "normality.remove", {"name": "scratch"}, "remove", "bob", "no")
    assert [n.name for n in registry.normalities("line-1")] == ["scratch"]
    approvals.approve(registry, change.id, "alice")
    assert registry.normalities("line-1") == []
    with pytest.raises(ChangeNotFoundError, match="no change 99"):
        approvals.approve(registry, 99, "alice")
    with pytest.raises(ChangeNotFoundError, match="not on line 'line-2'"):
        approvals.reject(registry, change.id, "alice", "x", line="line-2")


def test_a_payload_altered_in_the_database_cannot_be_approved(registry: Registry) -> None:
    change = _propose_scratch(registry)
    altered = "UPDATE pending_changes SET payload = replace(payload, '0.5', '1.0') WHERE id = ?"
    raw_rows(registry.location, altered, change.id)
    with pytest.raises(Exception, match="altered after it was proposed"):
        approvals.approve(registry, change.id, "bob")
    assert registry.normalities("line-1") == []



def test_a_change_that_expires_between_the_sweep_and_the_decision_is_refused(
    registry: Registry, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    change = _propose_scratch(registry)
    monkeypatch.setattr(approvals, "expire_due", lambda registry: [])  # the sweep ran just before expiry
    clock.now += timedelta(hours=8)
    with pytest.raises(ChangeNotPendingError, match="already expired"):
        approvals.approve(registry, change.id, "bob")
    assert registry.normalities("line-1") == []


def test_threshold_set_and_clear_wait_for_approval_and_keep_the_proposed_scale(registry: Registry) -> None:
    record = ThresholdRecord(0.42, {"detector": "tiny"}, "false-reject", {"false_reject": 0.01})
    change = approvals.propose(
        registry, "line-1", "threshold.set", approvals.threshold_payload(record), "set 0.42", "alice", "calibrated"
    )
    assert registry.threshold("line-1") is None
    with pytest.raises(RegistryError, match="no threshold: there is nothing to clear"):
        approvals.propose(registry, "line-1", "threshold.clear", {}, "clear", "alice")
    with pytest.raises(DecisionError):
        approvals.propose(registry, "line-1", "threshold.set", {"value": -1.0}, "set -1", "alice")
    approvals.approve(registry, change.id, "bob")
    stored = registry.threshold("line-1")
    assert stored is not None
    assert (stored.value, stored.scale, stored.method, stored.set_by, stored.why) == (
        0.42,
        {"detector": "tiny"},
        "false-reject",
        "alice",
        "calibrated",
    )
    cleared = approvals.propose(registry, "line-1", "threshold.clear", {}, "clear", "alice", "new detector")
    assert registry.threshold("line-1") is not None
    approvals.reject(registry, cleared.id, "bob", "keep it")
    assert registry.threshold("line-1") is not None
    cleared = approvals.propose(registry, "line-1", "threshold.clear", {}, "clear", "alice", "new detector")
    approvals.approve(registry, cleared.id, "bob")
    assert registry.threshold("line-1") is None
    actions = [(e.action, e.who) for e in registry.audit("line-1", limit=3)]
    assert actions == [("change.approve", "bob"), ("threshold.clear", "alice"), ("change.propose", "alice")]
    assert registry.verify_audit_chain().ok


def test_staging_and_activating_both_wait_for_approval(registry: Registry, clock: FakeClock) -> None:
    until = (clock.now + timedelta(days=14)).isoformat()
    record = NormalityRecord(
        "scratch", "scratch", 0.5, ["scratched bottle"], b"\x01\x02\x03\x04", "tiny|x", state="staged", until=until
    )
    record.limits = {"max_area": 400.0}
    staged = approvals.propose(
        registry, "line-1", "normality.add", approvals.normality_payload(record), "stage", "alice"
    )
    assert registry.normalities("line-1", ("active", "staged")) == []
    with pytest.raises(Exception, match="no normality named 'scratch'"):
        approvals.propose(registry, "line-1", "normality.activate", {"name": "scratch"}, "activate", "alice")
    approvals.approve(registry, staged.id, "bob")
    [stored] = registry.normalities("line-1", ("staged",))
    assert (stored.until, stored.limits) == (until, {"max_area": 400.0})
    assert registry.normalities("line-1") == []  # staged: does not apply
    with pytest.raises(Exception, match="already staged"):
        approvals.propose(registry, "line-1", "normality.add", approvals.normality_payload(record), "again", "alice")
    activate = approvals.propose(registry, "line-1", "normality.activate", {"name": "scratch"}, "activate", "alice")
    assert registry.normalities("line-1") == []
    approvals.approve(registry, activate.id, "bob")
    assert [n.name for n in registry.normalities("line-1")] == ["scratch"]
    with pytest.raises(Exception, match="is active, not staged"):
        approvals.propose(registry, "line-1", "normality.activate", {"name": "scratch"}, "activate", "alice")
    actions = [(e.action, e.who) for e in registry.audit("line-1", limit=3)]
    assert actions == [("change.approve", "bob"), ("normality.activate", "alice"), ("change.propose", "alice")]
