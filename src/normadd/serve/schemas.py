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


class ExampleSourceOut(BaseModel):
    """One example image of a visual normality, as the registry keeps it."""

    image: str = Field(description="The image's name as it was sent.")
    sha256: str = Field(description="SHA-256 of the image file.")
    mask_sha256: str | None = Field(None, description="SHA-256 of its mask file (None: the whole image).")


class NormalityOut(BaseModel):
    """An active normality."""

    name: str
    text: str
    strength: float
    phrases: list[str]
    added_at: str
    added_by: str
    kind: str = Field("text", description="'text' (named by text) or 'visual' (shown by example images).")
    sources: list[ExampleSourceOut] = Field(default_factory=list, description="The examples of a visual normality.")


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
