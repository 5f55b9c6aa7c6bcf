"""Many lines, one process: every registry line served, one encoder per backbone, one pass across lines."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from helpers.service_api import assert_error
from normadd.backbone import clip_encoder
from normadd.backbone.pool import EncoderPool
from normadd.cli import app as cli_app
from normadd.config import LineConfig
from normadd.registry.line_model import LineModel, create_line, explain_lines
from normadd.registry.store import Registry
from normadd.serve.app import create_app
from normadd.serve.settings import ServiceConfig

KEY = "station-1-secret"
AUTH = {"X-API-Key": KEY}
# three lines on one backbone (different products and normalities), one on another backbone
SAME = {"bottle-1": "bottle", "cap-2": "cap", "screw-3": "screw"}
OTHER = "tile-4"


def _png(seed: int = 0, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _registry(folder: Path) -> Path:
    """A registry holding the four lines (nothing loaded: none has configured normalities)."""
    database = folder / "normadd.db"
    registry = Registry(database)
    try:
        for name, class_name in SAME.items():
            create_line(registry, name, LineConfig(class_name=class_name, backbone="tiny-random"), "test")
        create_line(registry, OTHER, LineConfig(class_name="tile", backbone="tiny-random-winclip"), "test")
    finally:
        registry.close()
    return database


def _settings(database: Path, **changes: Any) -> ServiceConfig:
    values: dict[str, Any] = {
        "line": "bottle-1",
        "line_config": LineConfig(class_name="bottle", backbone="tiny-random"),
        "database": database,
        "api_keys": {"station-1": KEY},
        "batch_wait_ms": 200,
        "device": "cpu",
        **changes,
    }
    return ServiceConfig(**values)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NORMADD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return _registry(tmp_path_factory.mktemp("db"))


@pytest.fixture(scope="module")
def built() -> list[str]:
    """The backbones whose weights were built while the module's service started."""
    return []


@pytest.fixture(scope="module")
def client(database: Path, built: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    create_model = clip_encoder._create_model

    def counting_create_model(spec, weights):  # type: ignore[no-untyped-def]
        built.append(spec.name)
        return create_model(spec, weights)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NORMADD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        patch.delenv("NORMADD_API_KEYS", raising=False)
        patch.setattr(clip_encoder, "_create_model", counting_create_model)
        with TestClient(create_app(_settings(database))) as test_client:
            yield test_client


def _inspect(client: TestClient, line: str, seed: int = 0) -> Any:
    return client.post(
        f"/v1/lines/{line}/inspect", headers=AUTH, files=[("images", ("a.png", _png(seed), "image/png"))]
    )


def test_one_process_serves_every_registry_line_loaded_at_start(client: TestClient) -> None:
    health = client.get("/healthz").json()
    every = sorted([*SAME, OTHER])
    assert health["lines_served"] == every
    assert health["lines_loaded"] == every  # preloaded: no first inspection waits for a model
    for line in every:
        response = _inspect(client, line)
        assert response.status_code == 200, response.text
        assert response.json()["line"] == line
        assert len(response.json()["results"]) == 1


def test_lines_on_one_backbone_load_their_encoder_once(client: TestClient, built: list[str]) -> None:
    assert sorted(built) == ["tiny-random", "tiny-random-winclip"]  # 3 lines -> 1 load; the other its own
    service = client.app.state.service  # type: ignore[attr-defined]
    encoders = {name: service.lines[name].model.encoder for name in [*SAME, OTHER]}
    assert encoders["bottle-1"] is encoders["cap-2"] is encoders["screw-3"]
    assert encoders[OTHER] is not encoders["bottle-1"]
    assert service.encoders.loads == 2


def test_concurrent_inspections_of_lines_on_one_encoder_share_one_encoder_pass(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    batcher = service.lines["bottle-1"].batcher
    assert service.lines["cap-2"].batcher is batcher and service.lines["screw-3"].batcher is batcher
    assert service.lines[OTHER].batcher is not batcher
    size = service.lines["bottle-1"].model.input_size
    images = {
        name: torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(i)) for i, name in enumerate(SAME)
    }
    passes = batcher.stats.passes

    async def together() -> list[Any]:
        return await asyncio.gather(*(batcher.submit(batch, name) for name, batch in images.items()))

    results = client.portal.call(together)  # type: ignore[union-attr]
    assert batcher.stats.passes - passes == 1
    for (name, batch), shared in zip(images.items(), results, strict=True):
        alone = service.lines[name].model.explain(batch, service.registry)
        torch.testing.assert_close(shared.after_scores, alone.after_scores, atol=1e-6, rtol=0)
        torch.testing.assert_close(shared.after, alone.after, atol=1e-6, rtol=0)


def test_a_line_outside_the_registry_is_404_naming_the_known_ones(client: TestClient) -> None:
    assert_error(_inspect(client, "line-9"), 404, "unknown_line", "line-9", "bottle-1", OTHER)


def test_a_line_created_while_serving_every_line_is_served_on_first_use(client: TestClient, database: Path) -> None:
    registry = Registry(database)
    try:
        create_line(registry, "grid-5", LineConfig(class_name="grid", backbone="tiny-random"), "test")
    finally:
        registry.close()
    assert "grid-5" in client.get("/healthz").json()["lines_served"]
    assert _inspect(client, "grid-5").status_code == 200
    service = client.app.state.service  # type: ignore[attr-defined]
    assert service.lines["grid-5"].model.encoder is service.lines["bottle-1"].model.encoder
    assert service.encoders.loads == 2  # still one encoder per backbone


def test_lines_serves_only_the_named_lines_and_the_others_are_404(
    database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NORMADD_API_KEYS", raising=False)
    with TestClient(create_app(_settings(database, lines=["cap-2", OTHER]))) as client:
        health = client.get("/healthz").json()
        assert health["lines_served"] == ["cap-2", OTHER] == health["lines_loaded"]
        assert _inspect(client, "cap-2").status_code == 200
        assert [line["name"] for line in client.get("/v1/lines", headers=AUTH).json()] == ["cap-2", OTHER]
        for response in (
            _inspect(client, "screw-3"),
            client.get("/v1/lines/bottle-1/audit", headers=AUTH),
            client.get("/v1/lines/screw-3/threshold", headers=AUTH),
        ):
            assert_error(response, 404, "unknown_line", "not served here", "cap-2", OTHER)
        assert_error(client.get("/v1/lines/screw-3/audit"), 401, "unauthorized")  # no key, no answer about lines
        assert client.get("/healthz").json()["lines_loaded"] == ["cap-2", OTHER]


def test_without_sharing_each_line_builds_its_own_encoder(database: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NORMADD_API_KEYS", raising=False)
    settings = _settings(database, lines=list(SAME), share_encoders=False)
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        encoders = [service.lines[name].model.encoder for name in SAME]
        assert len({id(encoder) for encoder in encoders}) == 3
        assert len({id(service.lines[name].batcher) for name in SAME}) == 3
        assert _inspect(client, "screw-3").status_code == 200


def test_one_pass_for_several_lines_gives_what_each_line_gives_alone(database: Path) -> None:
    registry = Registry(database)
    try:
        pool = EncoderPool()
        models = [LineModel.load(registry, name, encoders=pool) for name in SAME]
        models[1].add(registry, "scratch", 0.8, "test", "cross-line check")  # one line with a normality
        size = models[0].input_size
        batches = [torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(n)) for n in (1, 3, 2)]
        calls: list[int] = []
        encode = models[0].encoder.encode_images

        def counting_encode(pixels: torch.Tensor) -> Any:
            calls.append(int(pixels.shape[0]))
            return encode(pixels)

        models[0].encoder.encode_images = counting_encode  # type: ignore[method-assign]
        shared = explain_lines(models, batches, registry, [False, True, False])
        assert calls == [6]  # one encoder pass for the six images of three lines
        for model, batch, together, keep in zip(models, batches, shared, [False, True, False], strict=True):
            alone = model.explain(batch, registry, keep)
            assert together.names == alone.names
            for field in ("before", "before_scores", "detector_scores", "suppression", "keep", "after", "after_scores"):
                torch.testing.assert_close(getattr(together, field), getattr(alone, field), atol=1e-6, rtol=0)
        assert shared[1].names == ["scratch"] and shared[1].projected is not None
        models[1].remove(registry, "scratch", "test", "cross-line check done")
    finally:
        registry.close()


def test_service_lines_in_the_config_means_what_lines_means(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NORMADD_API_KEYS", raising=False)
    config = tmp_path / "line.yaml"
    for written in ("[cap-2, tile-4]", "cap-2,tile-4", "' cap-2 , tile-4 ,'"):
        config.write_text(f"class_name: bottle\nservice:\n  lines: {written}\n  api_keys: {{k: secret-1}}\n")
        assert ServiceConfig.from_yaml(config).lines == ["cap-2", "tile-4"]


runner = CliRunner()


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        ("cap-2,nope-7", ("'nope-7'", "known lines are bottle-1, cap-2, ", "tile-4")),
        (" , ", ("names no line",)),
    ],
)
def test_bad_lines_is_one_line_and_exit_2(
    database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: str, words: tuple[str, ...]
) -> None:
    import uvicorn

    monkeypatch.delenv("NORMADD_API_KEYS", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("the service must not start"))
    config = tmp_path / "line.yaml"
    config.write_text(
        f"class_name: bottle\nbackbone: tiny-random\ndatabase: {database}\nservice:\n  api_keys: {{k: secret-1}}\n"
    )
    result = runner.invoke(cli_app, ["serve", "--config", str(config), "--lines", lines], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for word in words:
        assert word in result.output, result.output


def _lineless_config(folder: Path, database: Path, service: str = "") -> Path:
    """A service config with no line keys: only ``database`` and ``service``."""
    config = folder / "service.yaml"
    keys = f"  api_keys: {{station-1: {KEY}}}\n"
    config.write_text(f"database: {database}\nservice:\n{keys}  batch_wait_ms: 0\n{service}")
    return config


def test_a_config_without_line_keys_serves_the_registry_lines_and_creates_none(
    database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NORMADD_API_KEYS", raising=False)
    registry = Registry(database)
    try:
        stored = [line.name for line in registry.lines()]
        creates = len(registry.audit(action="line.create"))
    finally:
        registry.close()
    every = create_app(_lineless_config(tmp_path, database)).state.service  # type: ignore[attr-defined]
    try:
        assert every.settings.line is None and every.settings.line_config is None
        assert every.served_names() == stored  # no service.lines: every line of the registry
    finally:
        every.registry.close()
    config = _lineless_config(tmp_path, database, "  lines: [cap-2]\n")
    with TestClient(create_app(config)) as client:
        health = client.get("/healthz").json()
        assert health["lines_served"] == ["cap-2"] == health["lines_loaded"]
        assert _inspect(client, "cap-2").status_code == 200
        assert_error(_inspect(client, "bottle-1"), 404, "unknown_line", "not served here", "cap-2")
    registry = Registry(database)
    try:
        assert [line.name for line in registry.lines()] == stored  # nothing created
        assert len(registry.audit(action="line.create")) == creates
    finally:
        registry.close()


def test_line_options_on_a_config_without_line_keys_seed_the_line_they_name(
    database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    monkeypatch.delenv("NORMADD_API_KEYS", raising=False)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(service=app.state.service))
    config = _lineless_config(tmp_path, database)
    result = runner.invoke(cli_app, ["serve", "--config", str(config), "-c", "grid", "--backbone", "tiny-random"])
    assert result.exit_code == 0, result.output
    settings = seen["service"].settings
    seen["service"].registry.close()
    assert settings.line == "grid" and settings.line_config.backbone == "tiny-random"


@pytest.mark.parametrize(
    ("service", "args", "words"),
    [
        ("", [], ("no line to serve", "holds no line", "normadd line create NAME --class-name CLASS --db", "class_")),
        ("", ["--backbone", "tiny-random"], ("line options need a line", "--class-name", "no line keys")),
        ("  export: ./exported\n", [], ("service.export needs the line", "service.line")),
    ],
)
def test_a_config_without_line_keys_on_an_empty_registry_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service: str, args: list[str], words: tuple[str, ...]
) -> None:
    import uvicorn

    monkeypatch.delenv("NORMADD_API_KEYS", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("the service must not start"))
    config = _lineless_config(tmp_path, tmp_path / "empty.db", service)
    result = runner.invoke(cli_app, ["serve", "--config", str(config), *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for word in words:
        assert word in result.output, result.output


def test_service_line_of_a_config_without_line_keys_must_be_a_registry_line(
    database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    monkeypatch.delenv("NORMADD_API_KEYS", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("the service must not start"))
    config = _lineless_config(tmp_path, database, "  line: nope-7\n")
    result = runner.invoke(cli_app, ["serve", "--config", str(config)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "service.line names 'nope-7'" in result.output and "bottle-1" in result.output, result.output


def test_retained_dir_is_relative_to_the_config_and_the_option_wins(
    database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    monkeypatch.delenv("NORMADD_API_KEYS", raising=False)
    roots: list[Path] = []

    def started(app: Any, **kwargs: Any) -> None:
        roots.append(app.state.service.registry.retained_root)
        app.state.service.registry.close()

    monkeypatch.setattr(uvicorn, "run", started)
    config = _lineless_config(tmp_path, database, "  retained_dir: shared\n")
    assert runner.invoke(cli_app, ["serve", "--config", str(config)]).exit_code == 0
    other = tmp_path / "elsewhere"
    assert runner.invoke(cli_app, ["serve", "--config", str(config), "--retained-dir", str(other)]).exit_code == 0
    assert roots == [tmp_path / "shared", other]
    config.write_text(config.read_text().replace("retained_dir: shared", "retained_dir: [a, b]"))
    result = runner.invoke(cli_app, ["serve", "--config", str(config)], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "service.retained_dir must be a folder path" in result.output, result.output
