"""Visual normalities live in the registry: added from example images, audited with their hashes,
and still active, with the same memory, after the service or a line model is restarted."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from normadd.config import ExampleSetting, LineConfig
from normadd.errors import NormaddError
from normadd.images import load_image
from normadd.registry.line_model import LineModel, create_line
from normadd.registry.store import Registry
from normadd.serve.app import create_app
from normadd.serve.settings import ServiceConfig

KEY = "visual-station-secret"
AUTH = {"X-API-Key": KEY}
LINE = "bottle"
TINY = {"class_name": "bottle", "backbone": "tiny-random"}


def _paths(bottle_dir: Path, defect: str = "broken_large", stem: str = "000") -> tuple[Path, Path]:
    return bottle_dir / "test" / defect / f"{stem}.png", bottle_dir / "ground_truth" / defect / f"{stem}_mask.png"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _settings(database: Path) -> ServiceConfig:
    return ServiceConfig(
        line=LINE,
        line_config=LineConfig(**TINY),
        database=database,
        api_keys={"station-1": KEY},
        batch_wait_ms=0,
        device="cpu",
    )


@pytest.fixture
def service_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("NORMADD_API_KEYS", raising=False)
    yield


def _scores(client: TestClient, image: Path) -> dict[str, Any]:
    response = client.post(
        f"/v1/lines/{LINE}/inspect", headers=AUTH, files=[("images", (image.name, image.read_bytes(), "image/png"))]
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_an_example_added_over_http_survives_a_restart_with_the_same_effect(
    service_env: None, bottle_dir: Path, tmp_path: Path
) -> None:
    image, _ = _paths(bottle_dir)
    database = tmp_path / "normadd.db"
    with TestClient(create_app(_settings(database))) as client:
        added = client.post(  # the whole image as the example: its own score must drop (random weights)
            f"/v1/lines/{LINE}/examples",
            headers=AUTH,
            files=[("images", ("scuff.png", image.read_bytes(), "image/png"))],
            data={"strength": "0.8", "why": "customer accepts scuffs"},
        )
        assert added.status_code == 201, added.text
        body = added.json()
        assert (body["name"], body["kind"], body["strength"]) == ("example:scuff", "visual", 0.8)
        assert body["sources"] == [{"image": "scuff.png", "sha256": _sha(image), "mask_sha256": None}]
        before_restart = _scores(client, image)
        assert before_restart["normalities"] == [{"name": "example:scuff", "strength": 0.8}]
        result = before_restart["results"][0]
        assert result["score_after"] < result["score_before"]
        entry = client.get(f"/v1/lines/{LINE}/audit", headers=AUTH, params={"action": "normality.add"}).json()
        details = entry["entries"][0]["details"]
        assert (entry["entries"][0]["who"], entry["entries"][0]["why"]) == ("station-1", "customer accepts scuffs")
        assert details["kind"] == "visual" and details["sources"] == body["sources"]

    with TestClient(create_app(_settings(database))) as client:  # a new process would see the same
        listed = client.get(f"/v1/lines/{LINE}/normalities", headers=AUTH).json()["normalities"]
        assert [(n["name"], n["kind"]) for n in listed] == [("example:scuff", "visual")]
        after_restart = _scores(client, image)
        assert after_restart["results"][0]["score_after"] == pytest.approx(result["score_after"], rel=1e-5)
        removed = client.delete(f"/v1/lines/{LINE}/normalities/example:scuff", headers=AUTH)
        assert removed.status_code == 200 and removed.json()["kind"] == "visual"
        assert _scores(client, image)["normalities"] == []


def test_bad_examples_are_one_clear_4xx_naming_the_upload_and_change_nothing(
    service_env: None, bottle_dir: Path, tmp_path: Path
) -> None:
    image, mask = _paths(bottle_dir)
    other_size = tmp_path / "small.png"
    from PIL import Image

    Image.new("L", (32, 32), 255).save(other_size)
    with TestClient(create_app(_settings(tmp_path / "normadd.db"))) as client:
        audit = client.get(f"/v1/lines/{LINE}/audit", headers=AUTH).json()
        cases = [
            ([("images", ("notes.txt", b"not an image", "text/plain"))], "bad_image", "notes.txt"),
            (
                [
                    ("images", ("scuff.png", image.read_bytes(), "image/png")),
                    ("masks", ("tiny_mask.png", other_size.read_bytes(), "image/png")),
                ],
                "bad_request",
                "tiny_mask.png",
            ),
            (
                [
                    ("images", ("a.png", image.read_bytes(), "image/png")),
                    ("images", ("b.png", image.read_bytes(), "image/png")),
                    ("masks", ("m.png", mask.read_bytes(), "image/png")),
                ],
                "bad_request",
                "1 masks for 2 images",
            ),
        ]
        for files, code, word in cases:
            response = client.post(f"/v1/lines/{LINE}/examples", headers=AUTH, files=files)
            assert response.status_code == 422, response.text
            assert response.json()["error"] == code and word in response.json()["detail"], response.json()
            assert "normadd-examples-" not in response.json()["detail"], "a temporary path reached the client"
        assert client.get(f"/v1/lines/{LINE}/audit", headers=AUTH).json() == audit


def test_config_examples_seed_a_new_line_in_the_registry(bottle_dir: Path, tmp_path: Path) -> None:
    image, mask = _paths(bottle_dir)
    config = LineConfig(**TINY, examples=[ExampleSetting([str(image)], [str(mask)], 0.5, "scuff")])
    with Registry(tmp_path / "normadd.db") as registry:
        seeded = create_line(registry, LINE, config, "alice")
        assert seeded is not None
        stored = registry.normalities(LINE)
        assert [(n.name, n.kind, n.strength) for n in stored] == [("scuff", "visual", 0.5)]
        assert stored[0].sources == [{"image": "000.png", "sha256": _sha(image), "mask_sha256": _sha(mask)}]
        reloaded = LineModel.load(registry, LINE)  # what a restarted service does
    memory, again = seeded.addition.normalities["scuff"].memory, reloaded.addition.normalities["scuff"].memory
    assert memory is not None and again is not None
    assert again.layers == memory.layers and again.floors == memory.floors
    assert all(torch.equal(a, b) for a, b in zip(again.features, memory.features, strict=True))
    picture = load_image(image, reloaded.input_size)[None]
    assert torch.equal(reloaded.explain(picture).after, seeded.explain(picture).after)


def test_a_memory_from_another_encoder_is_refused_in_one_line(bottle_dir: Path, tmp_path: Path) -> None:
    image, _ = _paths(bottle_dir)
    with Registry(tmp_path / "normadd.db") as registry:
        create_line(registry, LINE, LineConfig(**TINY, examples=[ExampleSetting([str(image)], name="scuff")]), "a")
        registry._db.execute("UPDATE normalities SET embedding_backbone = 'ViT-L-14-336:other-weights'")
        with pytest.raises(NormaddError) as error:
            LineModel.load(registry, LINE)
    message = str(error.value)
    assert "\n" not in message and "scuff" in message and "normadd normality remove" in message


def test_the_cli_adds_an_example_normality_to_the_registry(bottle_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from normadd.cli import app

    runner = CliRunner()
    image, mask = _paths(bottle_dir)
    db = str(tmp_path / "normadd.db")
    created = runner.invoke(app, ["line", "create", LINE, "-c", "bottle", "--backbone", "tiny-random", "--db", db])
    assert created.exit_code == 0, created.output
    refused = runner.invoke(app, ["normality", "add-example", LINE, str(image), str(image), "--mask", str(mask)])
    assert refused.exit_code == 2 and "1 --mask for 2 images" in refused.output
    options = ["--mask", str(mask), "--strength", "0.6", "--db", db, "--who", "alice", "--why", "scuffs are fine"]
    added = runner.invoke(app, ["normality", "add-example", LINE, str(image), *options])
    assert added.exit_code == 0, added.output
    assert "added visual normality 'example:000' (strength 0.6, 1 example)" in added.output
    with Registry(db) as registry:
        (stored,) = registry.normalities(LINE)
        (entry,) = registry.audit(LINE, action="normality.add")
    assert stored.sources == [{"image": "000.png", "sha256": _sha(image), "mask_sha256": _sha(mask)}]
    assert (entry.who, entry.why, entry.details["sources"]) == ("alice", "scuffs are fine", stored.sources)
    listed = runner.invoke(app, ["normality", "list", LINE, "--db", db], env={"COLUMNS": "200"})
    assert "example:000" in listed.output and _sha(image)[:12] in listed.output
