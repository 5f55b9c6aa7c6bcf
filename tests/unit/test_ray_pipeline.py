"""The Ray pipeline's choices that need no cluster: addresses, actor resources, one-line errors."""

from __future__ import annotations

import socket

import pytest

from normadd.batch.ray_pipeline import RaySession, RayUnavailableError, _host_port, _probe, connect, resolve_address


def test_no_address_means_ray_address_when_set_else_a_private_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == resolve_address("") == "local"
    monkeypatch.setenv("RAY_ADDRESS", "head.example:6379")
    assert resolve_address(None) == "head.example:6379"
    assert resolve_address(" auto ") == "auto"  # an address given wins over RAY_ADDRESS


def test_host_and_port_of_each_address_form() -> None:
    assert _host_port("head.example:6379") == ("head.example", 6379)
    assert _host_port("ray://10.0.0.5:10001") == ("10.0.0.5", 10001)
    assert _host_port("[::1]:6379") == ("::1", 6379)
    assert _host_port("head.example") is None


def test_one_actor_per_gpu_with_one_gpu_each_else_one_per_cpu() -> None:
    gpu = RaySession("auto", cpus=64, gpus=4)
    assert gpu.actor_resources == {"num_gpus": 1} and gpu.actors == 4
    cpu = RaySession("local", started=True, cpus=16)
    assert cpu.actor_resources == {"num_cpus": 1} and cpu.actors == 16
    assert RaySession("auto").actors == 1  # a cluster reporting nothing still gets one actor
    assert "private" in cpu.where and "head.example:6379" in RaySession("head.example:6379").where


def test_a_closed_port_is_refused_in_one_line_naming_the_address_and_the_fix() -> None:
    with socket.socket() as free:  # a port nothing listens on once this socket is closed
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(RayUnavailableError) as caught:
        _probe(None, f"127.0.0.1:{port}")  # type: ignore[arg-type]  # the module is only used for "auto"
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "ray start --head" in message and "\n" not in message
    with pytest.raises(RayUnavailableError, match="an address is host:port"):
        _probe(None, "no-port-here")  # type: ignore[arg-type]


def test_a_ray_client_address_is_refused_in_one_line_with_the_ways_that_work() -> None:
    pytest.importorskip("ray")  # without Ray the missing extra is the one line (tests/integration/test_ray_batch.py)
    with pytest.raises(RayUnavailableError) as caught:
        connect("ray://head.example:10001")
    message = str(caught.value)
    assert "Ray Data does not run through Ray Client" in message and "--ray-address auto" in message
    assert "ray job submit" in message and "\n" not in message
