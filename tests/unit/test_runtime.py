"""Device and precision words: auto picks what there is; impossible requests fall back, noted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from normadd import runtime as runtime_module
from normadd.errors import DeviceError, NormaddError
from normadd.runtime import DEVICES, PRECISIONS, Runtime, cpu_bf16_flags, resolve_runtime


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(autouse=True)
def plain_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU without native bf16 unless a test says otherwise."""
    monkeypatch.setattr(runtime_module, "cpu_bf16_flags", lambda: ())


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_module, "cpu_bf16_flags", lambda: ("avx512_bf16",))


@pytest.fixture
def with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.usefixtures("no_cuda")
def test_a_cpu_with_native_bf16_runs_bf16_under_auto_and_says_so(bf16_cpu: None) -> None:
    runtime = resolve_runtime("auto", "auto")
    assert (runtime.device.type, runtime.precision) == ("cpu", "bf16")
    assert "avx512_bf16" in runtime.note and "--precision fp32" in runtime.note
    assert resolve_runtime("cpu", "bf16") == Runtime(torch.device("cpu"), "bf16", "")
    assert resolve_runtime("cpu", "fp32") == Runtime(torch.device("cpu"), "fp32", "")


def test_bf16_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cases = {
        "avx512": ("fpu sse2 avx512f avx512_vnni avx512_bf16", ("avx512_bf16",)),
        "amx": ("fpu sse2 avx2 amx_tile amx_bf16", ("amx_bf16",)),
        "neither": ("fpu sse2 avx2 avx512f", ()),
    }
    for name, (flags, expected) in cases.items():
        (tmp_path / name).write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpu_bf16_flags(str(tmp_path / name)) == expected
    assert cpu_bf16_flags(str(tmp_path / "missing")) == ()


@pytest.mark.usefixtures("no_cuda")
def test_auto_without_cuda_is_cpu_fp32() -> None:
    runtime = resolve_runtime("auto", "auto")
    assert (runtime.device.type, runtime.precision, runtime.note) == ("cpu", "fp32", "")


@pytest.mark.usefixtures("with_cuda")
def test_auto_with_cuda_is_cuda_bf16() -> None:
    runtime = resolve_runtime("auto", "auto")
    assert (runtime.device.type, runtime.precision, runtime.note) == ("cuda", "bf16", "")


@pytest.mark.usefixtures("with_cuda")
def test_cpu_can_be_chosen_even_with_cuda() -> None:
    runtime = resolve_runtime("cpu", "auto")
    assert (runtime.device.type, runtime.precision) == ("cpu", "fp32")


@pytest.mark.usefixtures("no_cuda")
def test_cuda_without_cuda_falls_back_to_cpu_with_a_note() -> None:
    runtime = resolve_runtime("cuda", "auto")
    assert runtime.device.type == "cpu"
    assert runtime.precision == "fp32"
    assert "no CUDA" in runtime.note and "CPU" in runtime.note


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_on_cpu_runs_fp32_with_a_note(precision: str) -> None:
    runtime = resolve_runtime("cpu", precision)
    assert runtime.precision == "fp32"
    assert precision in runtime.note and "fp32" in runtime.note


@pytest.mark.usefixtures("no_cuda")
def test_both_fallbacks_are_noted_together() -> None:
    runtime = resolve_runtime("cuda", "bf16")
    assert (runtime.device.type, runtime.precision) == ("cpu", "fp32")
    assert "no CUDA" in runtime.note and "bf16" in runtime.note


@pytest.mark.usefixtures("no_cuda")
def test_fp32_on_cpu_needs_no_note() -> None:
    assert resolve_runtime("cpu", "fp32").note == ""


@pytest.mark.parametrize("device", ["tpu", "gpu", "CUDA", "", "cuda:0"])
def test_an_unknown_device_raises_and_lists_the_choices(device: str) -> None:
    with pytest.raises(DeviceError) as caught:
        resolve_runtime(device, "auto")
    for choice in DEVICES:
        assert choice in str(caught.value)


@pytest.mark.parametrize("precision", ["fp8", "half", "float32", ""])
def test_an_unknown_precision_raises_and_lists_the_choices(precision: str) -> None:
    with pytest.raises(DeviceError) as caught:
        resolve_runtime("cpu", precision)
    for choice in PRECISIONS:
        assert choice in str(caught.value)


def test_device_error_is_a_normadd_error() -> None:
    with pytest.raises(NormaddError):
        resolve_runtime("tpu")


def test_autocast_dtype_follows_the_precision() -> None:
    cpu = torch.device("cpu")
    assert Runtime(cpu, "fp32").autocast_dtype is None
    assert Runtime(cpu, "bf16").autocast_dtype is torch.bfloat16
    assert Runtime(cpu, "fp16").autocast_dtype is torch.float16


def test_fp32_autocast_changes_nothing() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with Runtime(torch.device("cpu"), "fp32").autocast():
        product = a @ b
    assert product.dtype == torch.float32
    assert torch.equal(product, a @ b)


def test_bf16_autocast_computes_in_bf16() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with Runtime(torch.device("cpu"), "bf16").autocast():
        assert (a @ b).dtype == torch.bfloat16
