"""Choosing the runtime that runs a line, and keeping OpenVINO's telemetry off."""

from __future__ import annotations

import importlib.util
import os

import pytest

from normadd.detectors.inference_sessions import openvino_telemetry_off, resolve_line_runtime
from normadd.errors import NormaddError


def test_auto_is_torch_without_an_export_and_openvino_with_one() -> None:
    assert resolve_line_runtime("auto", has_export=False) == "torch"
    expected = "openvino" if importlib.util.find_spec("openvino") else "onnx"
    assert resolve_line_runtime("auto", has_export=True) == expected
    assert resolve_line_runtime("onnx", has_export=True) == "onnx"
    assert resolve_line_runtime("torch", has_export=False) == "torch"


@pytest.mark.parametrize(
    ("requested", "has_export", "message"),
    [
        ("tensorrt", True, "unknown: choose one of auto, torch, onnx, openvino"),
        ("onnx", False, "pass --export DIR"),
        ("openvino", False, "pass --export DIR"),
        ("torch", True, "pass --runtime auto, onnx or openvino"),
    ],
)
def test_runtime_choices_that_cannot_work_name_the_fix(requested: str, has_export: bool, message: str) -> None:
    with pytest.raises(NormaddError, match=message):
        resolve_line_runtime(requested, has_export)


def test_telemetry_switch_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with openvino_telemetry_off():
        assert os.environ["CI"] == "true"
    assert "CI" not in os.environ
    monkeypatch.setenv("CI", "false")
    with openvino_telemetry_off():
        assert os.environ["CI"] == "true"
    assert os.environ["CI"] == "false"
