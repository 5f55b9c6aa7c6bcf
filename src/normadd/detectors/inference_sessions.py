"""Run an exported model with onnxruntime or OpenVINO behind one small interface.

:func:`open_session` loads an ``.onnx`` file (onnxruntime or OpenVINO) or an OpenVINO IR
(``.xml`` with its ``.bin``) and answers with an :class:`InferenceSession`: its inputs and outputs
by name and shape, and ``run(feeds) -> {output name: array}``. Every load failure is one
:class:`~normadd.errors.ExportedModelError` line naming the file and the fix. OpenVINO runs with
the f32 precision hint (its CPU default here is bf16, ~1e-2 off torch) and with its telemetry off.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from normadd.errors import ExportedModelError, NormaddError

RUNTIMES = ("onnx", "openvino")
LINE_RUNTIMES = ("auto", "torch", *RUNTIMES)
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of an exported model: its names and shape (None for a dynamic axis)."""

    names: tuple[str, ...]
    shape: tuple[int | None, ...]

    @property
    def name(self) -> str:
        """The first (primary) name."""
        return self.names[0]


class InferenceSession(Protocol):
    """A loaded exported model."""

    path: Path
    runtime: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by every name they carry, for inputs by name."""
        ...


def check_runtime(name: str) -> str:
    """Return ``name`` when it is a known runtime.

    Raises:
        NormaddError: Another name (the message lists the known ones).
    """
    if name not in RUNTIMES:
        raise NormaddError(f"runtime '{name}' is unknown: choose one of {', '.join(RUNTIMES)}")
    return name


def resolve_line_runtime(requested: str, has_export: bool) -> str:
    """What runs a line: ``--runtime`` as given, or for ``auto`` torch without an export and else OpenVINO.

    ``auto`` with an export picks OpenVINO (f32), the fastest of the three on the CPU in
    ``benchmarks/bench_runtimes.py``, or onnxruntime when OpenVINO is not installed.

    Raises:
        NormaddError: An unknown runtime, an exported runtime without an export, or an export
            with the torch runtime.
    """
    if requested not in LINE_RUNTIMES:
        raise NormaddError(f"runtime '{requested}' is unknown: choose one of {', '.join(LINE_RUNTIMES)}")
    if requested == "auto":
        if not has_export:
            return "torch"
        return "openvino" if importlib.util.find_spec("openvino") is not None else "onnx"
    if requested != "torch" and not has_export:
        raise NormaddError(f"runtime {requested} runs an exported line: pass --export DIR from 'normadd export'")
    if requested == "torch" and has_export:
        raise NormaddError("an export is given but the runtime is torch: pass --runtime auto, onnx or openvino")
    return requested


@contextlib.contextmanager
def openvino_telemetry_off() -> Iterator[None]:
    """Keep OpenVINO's telemetry quiet during a call (it honours ``CI=true``; plants are often air-gapped)."""
    previous = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = previous


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _dims(shape: Any) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


class OnnxRuntimeSession:
    """An ``.onnx`` model on onnxruntime's CPU execution provider."""

    runtime = "onnx"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise NormaddError("onnxruntime is not installed: pip install 'normadd[onnx]'") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are not for plant operators
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own pybind error types
            raise ExportedModelError(
                f"{path} is not an ONNX model onnxruntime can load ({_first_line(error)}): pass the model.onnx "
                "that 'anomalib export' or 'normadd export' wrote (with its .onnx.data file beside it, if any)"
            ) from None
        self.path = path
        self.inputs = [TensorInfo((i.name,), _dims(i.shape)) for i in self._session.get_inputs()]
        self.outputs = [TensorInfo((o.name,), _dims(o.shape)) for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name."""
        names = [o.name for o in self.outputs]
        return dict(zip(names, self._session.run(names, feeds), strict=True))


class OpenVinoSession:
    """An OpenVINO IR (``.xml`` + ``.bin``) or ``.onnx`` model, compiled for the CPU in f32."""

    runtime = "openvino"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise NormaddError("OpenVINO is not installed: pip install 'normadd[openvino]'") from None
        weights = path.with_suffix(".bin")
        if path.suffix == ".xml" and not weights.is_file():
            raise ExportedModelError(
                f"OpenVINO model {path} has no weights file {weights.name} beside it: copy the .bin "
                "that was exported with it into the same folder"
            )
        config: dict[str, Any] = dict(OPENVINO_CONFIG)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            with openvino_telemetry_off():
                core = ov.Core()
                is_ir = path.suffix == ".xml"
                model = core.read_model(str(path), str(weights)) if is_ir else core.read_model(str(path))
                self._compiled = core.compile_model(model, "CPU", config)
        except Exception as error:  # OpenVINO raises RuntimeError with a multi-line C++ message
            raise ExportedModelError(
                f"{path} is not a model OpenVINO can load ({_first_line(error)}): pass the model.xml (with "
                "its .bin) or model.onnx that 'anomalib export' or 'normadd export' wrote"
            ) from None
        self.path = path
        self.inputs = [
            TensorInfo(tuple(sorted(p.get_names())) or (f"input{i}",), _partial(p.get_partial_shape()))
            for i, p in enumerate(self._compiled.inputs)
        ]
        self.outputs = [
            TensorInfo(_ordered_names(p.get_names(), i), _partial(p.get_partial_shape()))
            for i, p in enumerate(self._compiled.outputs)
        ]
        self._ports = list(self._compiled.outputs)
        self._request = self._compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by every name each carries (an OpenVINO output often has several)."""
        result = self._request.infer(feeds)
        arrays: dict[str, np.ndarray] = {}
        for port, info in zip(self._ports, self.outputs, strict=True):
            value = np.asarray(result[port]).copy()  # the request reuses its buffers
            for name in info.names:
                arrays[name] = value
        return arrays


def _ordered_names(names: set[str], index: int) -> tuple[str, ...]:
    # Prefer a plain name ("anomaly_map") over generated ones ("clamp_1") as the primary one.
    return tuple(sorted(names, key=lambda n: (not n.isidentifier(), n.startswith(("_", "onnx::")), len(n), n))) or (
        f"output{index}",
    )


def _partial(shape: Any) -> tuple[int | None, ...]:
    return tuple(d.get_length() if d.is_static else None for d in shape)


def open_session(
    path: str | Path, runtime: str, threads: int | None = None, option: str = "--model"
) -> InferenceSession:
    """Load an exported model for ``runtime`` ("onnx": onnxruntime; "openvino").

    ``option`` is the flag that named the file (``--model``; ``--export`` for a line export), for the hint.

    Raises:
        ExportedModelError: A missing file, a file of the wrong kind, an IR without its ``.bin``,
            or a file the runtime cannot load.
        NormaddError: An unknown runtime, or its package is not installed.
    """
    check_runtime(runtime)
    path = Path(path)
    if not path.is_file():
        raise ExportedModelError(f"exported model {path} does not exist: fix the path ({option})")
    if runtime == "onnx" and path.suffix != ".onnx":
        raise ExportedModelError(
            f"{path} is not an .onnx file: onnxruntime reads ONNX; for an OpenVINO .xml use the openvino runtime"
        )
    if runtime == "openvino" and path.suffix not in (".xml", ".onnx"):
        raise ExportedModelError(f"{path} is neither an OpenVINO .xml nor an .onnx file: pass the model.xml")
    if runtime == "onnx":
        return OnnxRuntimeSession(path, threads)
    return OpenVinoSession(path, threads)
