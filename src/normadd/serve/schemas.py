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
    max_area: float | str | None = Field(
        None, description="Accept only defect regions up to this area: px² of the image, or e.g. '4 mm2'."
    )
    max_length: float | str | None = Field(
        None, description="Accept only defect regions up to this length: px of the image, or e.g. '2 mm'."
    )


class NormalityOut(BaseModel):
    """An active normality."""

    name: str
    text: str
    strength: float
    phrases: list[str]
    added_at: str
    added_by: str
    limits: dict[str, Any] | None = None


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
    """Scores and verdicts of one inspected image."""

    filename: str
    sha256: str
    score_before: float
    score_after: float
    audit_id: int
    maps: MapsOut | None = None
    verdict_before: str = Field("undecided", description="OK, NG (score above the threshold) or undecided.")
    verdict_after: str = Field("undecided", description="OK, NG or undecided, after the active normalities.")
    accepted_by: list[str] = Field(
        default_factory=list,
        description="For a part NG before and OK after: each normality whose removal alone would make it NG again "
        "(or, when accepted_combined, all of them: only together).",
    )
    accepted_combined: bool = False
    verdict_reason: str = Field("", description="Why the verdicts are undecided ('' when decided).")
    threshold: float | None = None


class ThresholdIn(BaseModel):
    """A threshold set by hand, for the line's current detector."""

    value: float = Field(ge=0.0, allow_inf_nan=False, description="NG when a score is above it.", examples=[0.42])
    why: str = Field("", max_length=500, description="Reason, kept in the audit log.")


class ThresholdOut(BaseModel):
    """A line's threshold, how it was set, and whether it fits the line's current detector."""

    line: str
    value: float | None
    method: str | None = None
    set_at: str | None = None
    set_by: str | None = None
    why: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    status: str = Field(description="'valid', 'stale: <reason>' or 'none'.")


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


class HealthOut(BaseModel):
    """Liveness and what the service has loaded."""

    status: str
    lines_loaded: list[str]
    forward_passes: int
    images_inspected: int
