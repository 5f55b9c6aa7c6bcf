"""Assertions on the service's JSON answers, shared by the service test modules."""

from __future__ import annotations

from typing import Any


def assert_error(response: Any, status: int, code: str, *words: str) -> None:
    """``response`` is the JSON error ``{"error": code, "detail": ...}`` with ``status``; its detail names ``words``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    for word in words:
        assert word in body["detail"], body
