"""Two-person approval: a change to a line with ``approval: required`` waits until someone else approves it.

A pending change is an operation *kind* and its JSON *payload*; :data:`APPLY` maps each kind to
the function that applies it to the registry, so a new kind of change is one entry there. An
approval applies the change and records the decision in one transaction; a rejected or expired
change never applies. Every step is audited: ``change.propose`` (who proposed),
``change.approve`` / ``change.reject`` (who decided, naming the proposer), ``change.expire`` and
``change.refused`` (a proposer trying to approve their own change). Torch-free.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from normadd.registry.database import Database
from normadd.registry.errors import (
    DuplicateNormalityError,
    NormalityNotFoundError,
    RegistryError,
)
from normadd.registry.store import NormalityRecord, Registry, ThresholdRecord

APPROVAL_MODES = ("none", "required")
BINARY_PAYLOAD = ("embedding", "memory")  # base64 in a payload: kept for applying, left out where it is shown
DEFAULT_EXPIRES_HOURS = 72.0


class ChangeNotFoundError(RegistryError, LookupError):
    """A pending-change id that is not in the registry (or not on that line)."""


class ChangeNotPendingError(RegistryError):
    """A change already approved, rejected or expired."""


class SelfApprovalError(RegistryError):
    """The proposer of a change trying to approve it."""


@dataclass
class PendingChange:
    """A change proposed on a line that needs approval.

    Attributes:
        id: Its number (used to approve or reject it).
        line: The line it changes.
        kind: The operation (a key of :data:`APPLY`, e.g. ``normality.add``).
        payload: What :data:`APPLY` needs to carry it out.
        summary: One line a person reads before approving.
        why: The proposer's reason.
        proposed_by: Who proposed it.
        proposed_at: ISO time (UTC).
        expires_at: ISO time (UTC) after which it can no longer be approved.
        status: ``pending``, ``approved``, ``rejected`` or ``expired``.
        decided_by: Who approved or rejected it (``normadd`` when it expired).
        decided_at: ISO time of the decision.
        decision_why: The approver's or rejecter's reason.
    """

    id: int
    line: str
    kind: str
    payload: dict[str, Any]
    summary: str
    why: str
    proposed_by: str
    proposed_at: str
    expires_at: str
    status: str = "pending"
    decided_by: str | None = None
    decided_at: str | None = None
    decision_why: str = ""


Applier = Callable[[Registry, str, dict[str, Any], str, str], object]


def _apply_normality_add(registry: Registry, line: str, payload: dict[str, Any], who: str, why: str) -> object:
    return registry.add_normality(line, normality_from_payload(payload), who, why)


def _apply_normality_remove(registry: Registry, line: str, payload: dict[str, Any], who: str, why: str) -> object:
    return registry.remove_normality(line, str(payload["name"]), who, why)


def _apply_line_settings(registry: Registry, line: str, payload: dict[str, Any], who: str, why: str) -> object:
    return registry.update_line_settings(line, dict(payload["settings"]), who, why)


def _apply_normality_activate(registry: Registry, line: str, payload: dict[str, Any], who: str, why: str) -> object:
    return registry.activate_normality(line, str(payload["name"]), who, why)


def _apply_threshold_set(registry: Registry, line: str, payload: dict[str, Any], who: str, why: str) -> object:
    return registry.set_threshold(line, threshold_from_payload(payload), who, why)


def _apply_threshold_clear(registry: Registry, line: str, payload: dict[str, Any], who: str, why: str) -> object:
    return registry.clear_threshold(line, who, why)


# kind -> how to apply it (who is the proposer, why their reason). One entry per kind of change.
# ``normality.add`` also stages (the payload's ``state`` is ``staged``); ``normality.activate``
# makes a staged one apply; ``threshold.set`` covers a threshold set by hand and a calibrated one.
APPLY: dict[str, Applier] = {
    "normality.add": _apply_normality_add,
    "normality.remove": _apply_normality_remove,
    "normality.activate": _apply_normality_activate,
    "threshold.set": _apply_threshold_set,
    "threshold.clear": _apply_threshold_clear,
    "line.settings": _apply_line_settings,
}


def normality_payload(record: NormalityRecord) -> dict[str, Any]:
    """A prepared normality as JSON, so the approved change is exactly what was proposed.

    ``f_add`` (text) and the example memory (visual) are base64; a visual one's sources are its images' hashes.
    """
    data = asdict(record)
    data.pop("added_at"), data.pop("added_by")
    for key in BINARY_PAYLOAD:
        data[key] = base64.b64encode(data[key]).decode() if data[key] is not None else None
    return data


def normality_from_payload(payload: dict[str, Any]) -> NormalityRecord:
    """The record :func:`normality_payload` wrote."""
    data = dict(payload)
    for key in BINARY_PAYLOAD:
        if data.get(key) is not None:
            data[key] = base64.b64decode(data[key])
    return NormalityRecord(**data)


def visual_summary(record: NormalityRecord) -> str:
    """The line an approver reads for a proposed visual normality: name, strength, each image and its hash."""
    count = len(record.sources)
    images = ", ".join(f"{s['image']} ({str(s['sha256'])[:12]})" for s in record.sources)
    examples = f"{count} example{'s' * (count != 1)}"
    return f"add visual normality '{record.name}' (strength {record.strength:g}, {examples}): {images}"


def shown_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload as people see it (audit, REST, CLI): without the base64 of ``f_add`` or an example memory."""
    return {k: v for k, v in payload.items() if k not in BINARY_PAYLOAD}


def threshold_payload(record: ThresholdRecord) -> dict[str, Any]:
    """A threshold to set as JSON (value, the score scale it belongs to, method and how it was found)."""
    return {"value": record.value, "scale": record.scale, "method": record.method, "details": record.details}


def threshold_from_payload(payload: dict[str, Any]) -> ThresholdRecord:
    """The record :func:`threshold_payload` wrote (who and when are set when it applies)."""
    return ThresholdRecord(
        value=float(payload["value"]),
        scale=payload.get("scale"),
        method=str(payload.get("method", "set")),
        details=dict(payload.get("details") or {}),
    )


def approval_required(registry: Registry, line: str) -> bool:
    """True when the line's changes need a second person's approval.

    Raises:
        LineNotFoundError: No such line.
    """
    return registry.line(line).settings.get("approval", "none") == "required"


def propose(
    registry: Registry, line: str, kind: str, payload: dict[str, Any], summary: str, who: str, why: str = ""
) -> PendingChange:
    """Record a change that waits for approval; nothing on the line changes yet.

    Raises:
        LineNotFoundError: No such line.
        DuplicateNormalityError / NormalityNotFoundError / RegistryError: The change could not apply
            as things stand (e.g. activating a normality that is not staged, clearing no threshold).
        DecisionError: A threshold that is not a finite number >= 0.
        ValueError: An unknown kind.
    """
    if kind not in APPLY:
        raise ValueError(f"unknown kind of change '{kind}': known {', '.join(sorted(APPLY))}")
    stored = registry.line(line)
    _check_applies(registry, line, kind, payload)
    hours = float(stored.settings.get("approval_expires_hours", DEFAULT_EXPIRES_HOURS))
    now = registry.clock()
    text = json.dumps(payload, sort_keys=True)
    shown = shown_payload(payload)
    with registry.transaction() as db:
        cursor = db.execute(
            "INSERT INTO pending_changes (line, kind, payload, summary, why, proposed_by, proposed_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (line, kind, text, summary, why or "", who, _iso(now), _iso(now + timedelta(hours=hours))),
        )
        change_id = int(cursor.fetchone()[0])
        details = {
            "change_id": change_id,
            "kind": kind,
            "summary": summary,
            "payload": shown,
            "payload_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "expires_at": _iso(now + timedelta(hours=hours)),
        }
        registry.record(line, "change.propose", who, why, details)
        return _load(db, change_id)


def changes(registry: Registry, line: str | None = None, status: str | None = "pending") -> list[PendingChange]:
    """Changes (pending ones by default), oldest first; those past their time are expired first."""
    expire_due(registry)
    clauses, values = [], []
    for clause, value in (("line = ?", line), ("status = ?", status)):
        if value is not None:
            clauses.append(clause)
            values.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    with registry.transaction() as db:
        rows = db.execute(f"SELECT * FROM pending_changes {where} ORDER BY id", values).fetchall()
    return [_change(row) for row in rows]


def approve(registry: Registry, change_id: int, who: str, why: str = "", line: str | None = None) -> PendingChange:
    """Apply a pending change for a second person and record who approved it.

    Raises:
        ChangeNotFoundError: No such change (on ``line`` when given).
        ChangeNotPendingError: Already decided or expired.
        SelfApprovalError: ``who`` proposed it (the refusal is audited).
        RegistryError: The change no longer applies (e.g. the normality was removed meanwhile).
    """
    expire_due(registry)
    with registry.transaction() as db:
        change = _pending(db, change_id, line, registry.now())
        if who != change.proposed_by:
            row = db.execute("SELECT payload FROM pending_changes WHERE id = ?", (change_id,)).fetchone()
            _check_unaltered(db, change_id, row[0])
            APPLY[change.kind](registry, change.line, change.payload, change.proposed_by, change.why)
            _decide(registry, db, change, "approved", who, why)
            return _load(db, change_id)
    registry.record(change.line, "change.refused", who, why, {"change_id": change_id, "reason": "own change"})
    raise SelfApprovalError(
        f"'{who}' proposed change {change_id} and cannot approve it: another person with the approve scope must"
    )


def reject(registry: Registry, change_id: int, who: str, why: str, line: str | None = None) -> PendingChange:
    """Close a pending change without applying it; the reason is audited.

    Raises:
        ChangeNotFoundError: No such change.
        ChangeNotPendingError: Already decided or expired.
        ValueError: No reason given.
    """
    if not why.strip():
        raise ValueError("a rejection needs a reason: give one (--why on the CLI, 'why' over REST)")
    expire_due(registry)
    with registry.transaction() as db:
        change = _pending(db, change_id, line, registry.now())
        _decide(registry, db, change, "rejected", who, why)
        return _load(db, change_id)


def expire_due(registry: Registry) -> list[PendingChange]:
    """Mark pending changes past their time as expired (audited as ``change.expire``); returns them."""
    now = registry.now()
    with registry.transaction() as db:
        due = [
            _change(row)
            for row in db.execute(
                "SELECT * FROM pending_changes WHERE status = 'pending' AND expires_at <= ? ORDER BY id", (now,)
            ).fetchall()
        ]
        for change in due:
            _decide(registry, db, change, "expired", "normadd", f"not approved by {change.expires_at}")
    return due


def _check_applies(registry: Registry, line: str, kind: str, payload: dict[str, Any]) -> None:
    """Refuse, at proposal time, a change that could not apply as things stand."""
    if kind in ("normality.add", "normality.remove", "normality.activate"):
        stored = {n.name: n.state for n in registry.normalities(line, ("active", "staged", "expired"))}
        name = payload["name"]
        state = stored.get(name)
        if kind == "normality.add" and state in ("active", "staged"):
            raise DuplicateNormalityError(
                f"normality '{name}' is already {state} on line '{line}': remove it first to change it"
            )
        if kind == "normality.remove" and state is None:  # a staged or expired one can be removed too
            known = "; ".join(
                f"{wanted}: {', '.join(n for n, s in stored.items() if s == wanted) or 'none'}"
                for wanted in ("active", "staged")
            )
            raise NormalityNotFoundError(f"no normality named '{name}' on line '{line}' ({known})")
        if kind == "normality.activate" and state != "staged":
            if state is None:
                staged = [n for n, s in stored.items() if s == "staged"]
                raise NormalityNotFoundError(
                    f"no normality named '{name}' on line '{line}' (staged: {', '.join(staged) or 'none'})"
                )
            raise RegistryError(f"normality '{name}' on line '{line}' is {state}, not staged: nothing to activate")
    if kind == "threshold.set":
        from normadd.decisions.thresholds import check_threshold

        check_threshold(payload["value"])
    if kind == "threshold.clear" and registry.threshold(line) is None:  # no approver's time spent on nothing
        raise RegistryError(f"line '{line}' has no threshold: there is nothing to clear")


def _check_unaltered(db: Database, change_id: int, payload: str) -> None:
    """The payload is still what the (hash-chained) proposal row recorded."""
    for (details,) in db.execute(
        "SELECT details FROM audit_log WHERE action = 'change.propose' AND line = "
        "(SELECT line FROM pending_changes WHERE id = ?) ORDER BY id DESC",
        (change_id,),
    ):
        recorded = json.loads(details)
        if recorded.get("change_id") == change_id:
            if recorded.get("payload_sha256") != hashlib.sha256(payload.encode()).hexdigest():
                raise RegistryError(f"change {change_id} was altered after it was proposed: it cannot be approved")
            return
    raise RegistryError(f"change {change_id} has no proposal in the audit log: it cannot be approved")


def _decide(registry: Registry, db: Database, change: PendingChange, status: str, who: str, why: str) -> None:
    db.execute(
        "UPDATE pending_changes SET status = ?, decided_by = ?, decided_at = ?, decision_why = ? WHERE id = ?",
        (status, who, registry.now(), why or "", change.id),
    )
    action = {"approved": "change.approve", "rejected": "change.reject", "expired": "change.expire"}[status]
    details = {
        "change_id": change.id,
        "kind": change.kind,
        "summary": change.summary,
        "proposed_by": change.proposed_by,
        "decided_by": who,
    }
    registry.record(change.line, action, who, why, details)


def _pending(db: Database, change_id: int, line: str | None, now: str) -> PendingChange:
    change = _load(db, change_id)
    if change.status == "pending" and change.expires_at <= now:  # expired since expire_due ran
        change.status = "expired"
    if line is not None and change.line != line:
        raise ChangeNotFoundError(f"change {change_id} is not on line '{line}' (it is on '{change.line}')")
    if change.status != "pending":
        by = f" by {change.decided_by}" if change.decided_by and change.status != "expired" else ""
        raise ChangeNotPendingError(f"change {change_id} is already {change.status}{by}: it cannot be decided again")
    return change


def _load(db: Database, change_id: int) -> PendingChange:
    row = db.execute("SELECT * FROM pending_changes WHERE id = ?", (change_id,)).fetchone()
    if row is None:
        raise ChangeNotFoundError(f"no change {change_id} in the registry: list them with `normadd change list`")
    return _change(row)


def _change(row: Any) -> PendingChange:
    return PendingChange(**{**dict(row), "payload": json.loads(row["payload"])})


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")  # the form Registry.now() writes
