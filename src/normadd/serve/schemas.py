"""Request and response bodies of the REST API (they make the OpenAPI docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorOut(BaseModel):
    """Every error: a short code and a message that says what to fix."""

    error: str = Field(examples=["duplicate_normality"])
    detail: str = Field(examples=["normality 'scratch' is already active on line 'bottle': remove it first"])


class NormalityIn(BaseModel):
    """A defect type to make normal.

    Strict: a JSON string or boolean is not taken for the strength (pydantic's lax mode would
    read ``"0.5"`` and ``true`` as numbers), and unknown keys are refused rather than ignored.
    """

    model_config = ConfigDict(strict=True, extra="forbid")

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
    staged: bool = Field(False, description="Store it without applying it (preview it, then activate it).")
    until: str | None = Field(
        None, max_length=64, description="Stop applying it after this time (UTC, ISO 8601).", examples=["2026-12-15"]
    )


class ActivateIn(BaseModel):
    """Why a staged normality is activated."""

    why: str = Field("", max_length=500, description="Reason, kept in the audit log.")


class ExampleSourceOut(BaseModel):
    """One example image of a visual normality, as the registry keeps it."""

    image: str = Field(description="The image's name as it was sent.")
    sha256: str = Field(description="SHA-256 of the image file.")
    mask_sha256: str | None = Field(None, description="SHA-256 of its mask file (None: the whole image).")


class NormalityOut(BaseModel):
    """A normality of a line and its state."""

    name: str
    text: str
    strength: float
    phrases: list[str]
    added_at: str
    added_by: str
    state: str = Field("active", description="active (applies), staged (not yet applied) or expired.")
    until: str | None = Field(None, description="When it stops applying (UTC), or null.")
    limits: dict[str, Any] | None = None
    kind: str = Field("text", description="'text' (named by text) or 'visual' (shown by example images).")
    sources: list[ExampleSourceOut] = Field(default_factory=list, description="The examples of a visual normality.")


class NormalitiesOut(BaseModel):
    """The normalities of a line (active, staged and expired; see each one's state)."""

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
    lines_served: list[str] = Field(description="The lines this service serves (--lines, else every registry line).")
    lines_loaded: list[str] = Field(description="The served lines whose models are loaded now.")
    forward_passes: int
    images_inspected: int


class PreviewIn(BaseModel):
    """A normality to preview on the line's last retained parts (nothing is stored but one audit row)."""

    text: str = Field(description="Defect text, or the name of a staged normality.", examples=["scratch"])
    recent: int = Field(100, ge=1, le=10000, description="Preview on the last N retained parts.")
    strength: float | None = Field(None, ge=0.0, le=1.0, description="s in [0, 1] (default 1, or the staged one's).")
    max_area: str | float | None = Field(None, description="Acceptance limit, e.g. 400 (pixels) or '4 mm2'.")
    max_length: str | float | None = Field(None, description="Acceptance limit, e.g. 30 (pixels) or '2 mm'.")
    why: str = Field("", max_length=500, description="Reason, kept in the audit log.")
    maps: bool = Field(True, description="Return each flipped part's thumbnail and suppression map (PNG).")


class PreviewPartOut(BaseModel):
    """One previewed part: "before" is the line as it runs now, "after" with the candidate."""

    image: str
    sha256: str
    score_detector: float
    score_before: float
    score_after: float
    verdict_before: str
    verdict_after: str
    accepted_by_before: list[str]
    accepted_by_after: list[str]
    combined_after: bool
    source: str
    thumbnail: str | None = Field(None, description="The retained image, base64 PNG (flips only).")
    suppression: str | None = Field(None, description="The candidate's suppression map over it, base64 PNG.")


class PreviewOut(BaseModel):
    """What a preview found: the flips (NG now, OK with the candidate) and each normality's share."""

    line: str
    name: str
    text: str
    strength: float
    phrases: list[str]
    staged: bool
    parts: int
    ng_before: int
    ng_after: int
    threshold: float | None
    reason: str
    notes: list[str]
    refused: list[str]
    shares_before: dict[str, int]
    shares_after: dict[str, int]
    text_seconds: float
    scoring_seconds: float
    audit_id: int
    flips: list[PreviewPartOut]
    items: list[PreviewPartOut]


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
