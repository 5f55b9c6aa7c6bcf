"""Request and response bodies of the REST API (they make the OpenAPI docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    """Every error: a short code and a message that says what to fix."""

    error: str = Field(examples=["duplicate_normality"])
    detail: str = Field(examples=["normality 'scratch' is already active on line 'bottle': remove it first"])


class NormalityIn(BaseModel):
    """A defect type to make normal."""

    text: str = Field(description="Defect text, e.g. 'scratch'.", examples=["scratch"])
    strength: float = Field(1.0, ge=0.0, le=1.0, description="Suppression strength s in [0, 1].")
    name: str | None = Field(None, description="Key to remove it by (default: the text).")
    why: str = Field("", max_length=500, description="Reason, kept in the audit log.")


class NormalityOut(BaseModel):
    """An active normality."""

    name: str
    text: str
    strength: float
    phrases: list[str]
    added_at: str
    added_by: str


class NormalitiesOut(BaseModel):
    """The active normalities of a line."""

    line: str
    normalities: list[NormalityOut]


class MapsOut(BaseModel):
    """Heat-map overlays as base64 PNG (before and after on one colour scale)."""

    before: str
    suppression: str
    after: str


class ImageResultOut(BaseModel):
    """Scores of one inspected image."""

    filename: str
    sha256: str
    score_before: float
    score_after: float
    audit_id: int
    maps: MapsOut | None = None


class InspectionOut(BaseModel):
    """The result of one inspection request."""

    line: str
    model: str
    random_weights: bool
    normalities: list[dict[str, Any]]
    results: list[ImageResultOut]


class AuditEntryOut(BaseModel):
    """One audit log row."""

    id: int
    at: str
    line: str
    action: str
    who: str
    why: str
    details: dict[str, Any]
    prev_hash: str | None = Field(None, description="The previous row's row_hash (the chain's link).")
    row_hash: str | None = Field(None, description="SHA-256 over this row's canonical JSON and prev_hash.")


class AuditOut(BaseModel):
    """Audit rows, newest first."""

    line: str
    entries: list[AuditEntryOut]


class LineOut(BaseModel):
    """A product line."""

    name: str
    class_name: str
    detector: str
    backbone: str
    created_at: str
    approval: str = Field("none", description="'required' when changes wait for a second person's approval.")


class HealthOut(BaseModel):
    """Liveness and what the service has loaded."""

    status: str
    lines_loaded: list[str]
    forward_passes: int
    images_inspected: int


class MeOut(BaseModel):
    """The key a request was made with: who it is and what it may do."""

    name: str
    scopes: list[str]


class DecisionIn(BaseModel):
    """An approver's reason (required to reject)."""

    why: str = Field("", max_length=500, description="Reason, kept in the audit log.")


class ChangeOut(BaseModel):
    """A change waiting for (or decided by) a second person's approval."""

    id: int
    line: str
    kind: str = Field(examples=["normality.add"])
    summary: str
    payload: dict[str, Any] = Field(description="What applies on approval (f_add left out).")
    why: str
    proposed_by: str
    proposed_at: str
    expires_at: str
    status: str = Field(examples=["pending"], description="pending, approved, rejected or expired")
    decided_by: str | None = None
    decided_at: str | None = None
    decision_why: str = ""


class ChangesOut(BaseModel):
    """Changes of a line, oldest first."""

    line: str
    changes: list[ChangeOut]


class ChainOut(BaseModel):
    """The audit log's hash chain, walked from the first row."""

    ok: bool
    rows: int = Field(description="Rows that matched.")
    head_id: int = Field(description="Last row that matched.")
    head_hash: str = Field(description="Its row_hash: keep it to detect a rewrite of the whole log later.")
    first_bad_row: int | None = None
    problem: str | None = None
