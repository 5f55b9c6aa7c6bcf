"""Decisions in the REST service: a threshold per line, verdicts in every answer and audit row."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from normadd.config import LineConfig
from normadd.registry.line_model import LineModel
from normadd.registry.store import Registry
from normadd.serve.app import create_app
from normadd.serve.settings import ServiceConfig

KEY = "decisions-secret"
AUTH = {"X-API-Key": KEY}
LINE = "bottle-decisions"


def _png(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("db") / "normadd.db"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, database: Path) -> Iterator[TestClient]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("NORMADD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        settings = ServiceConfig(
            line=LINE,
            line_config=LineConfig(class_name="bottle", backbone="tiny-random"),
            database=database,
            api_keys={"station-1": KEY},
            batch_wait_ms=5,
            device="cpu",
        )
        with TestClient(create_app(settings)) as test_client:
            yield test_client


def _inspect(client: TestClient, *files: tuple[str, bytes]) -> Any:
    return client.post(
        f"/v1/lines/{LINE}/inspect",
        headers=AUTH,
        files=[("images", (name, data, "image/png")) for name, data in files],
    )


def _state(client: TestClient) -> tuple[Any, Any]:
    threshold = client.get(f"/v1/lines/{LINE}/threshold", headers=AUTH).json()
    audit = client.get(f"/v1/lines/{LINE}/audit", headers=AUTH, params={"limit": 1000}).json()
    return threshold, audit


def test_without_a_threshold_verdicts_are_undecided_with_the_reason(client: TestClient) -> None:
    client.delete(f"/v1/lines/{LINE}/threshold", headers=AUTH)
    result = _inspect(client, ("a.png", _png())).json()["results"][0]
    assert (result["verdict_before"], result["verdict_after"]) == ("undecided", "undecided")
    assert "no threshold" in result["verdict_reason"] and "normadd calibrate" in result["verdict_reason"]


@pytest.mark.parametrize(
    "body", ['{"value": NaN}', '{"value": -0.5}', '{"value": "high"}', '{"value": Infinity}', "{}"]
)
def test_a_bad_threshold_is_a_json_422_and_changes_nothing(client: TestClient, body: str) -> None:
    client.put(f"/v1/lines/{LINE}/threshold", headers=AUTH, json={"value": 1.5})
    before = _state(client)
    response = client.put(
        f"/v1/lines/{LINE}/threshold", headers={**AUTH, "Content-Type": "application/json"}, content=body
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"
    assert "value" in response.json()["detail"]
    assert _state(client) == before


def test_setting_a_threshold_is_audited_and_decides_every_inspection(client: TestClient) -> None:
    score = _inspect(client, ("probe.png", _png(seed=3))).json()["results"][0]["score_before"]
    answer = client.put(
        f"/v1/lines/{LINE}/threshold", headers=AUTH, json={"value": score / 2, "why": "half the probe score"}
    ).json()
    assert answer["status"] == "valid" and answer["set_by"] == "station-1" and answer["method"] == "set"
    entry = client.get(f"/v1/lines/{LINE}/audit", headers=AUTH, params={"action": "threshold.set"}).json()
    assert (entry["entries"][0]["who"], entry["entries"][0]["why"]) == ("station-1", "half the probe score")
    result = _inspect(client, ("probe.png", _png(seed=3))).json()["results"][0]
    assert (result["verdict_before"], result["verdict_after"]) == ("NG", "NG")
    assert result["threshold"] == pytest.approx(score / 2)


def test_a_normality_flips_ng_to_ok_and_the_answer_and_audit_agree(client: TestClient) -> None:
    files = [(f"{i}.png", _png(seed=10 + i)) for i in range(3)]
    scores = _inspect(client, *files).json()["results"]
    # a threshold between the lowest "after" with the normality and the lowest "before": found below
    added = client.post(f"/v1/lines/{LINE}/normalities", headers=AUTH, json={"text": "broken"})
    assert added.status_code == 201, added.text
    try:
        with_normality = _inspect(client, *files).json()["results"]
        after = [r["score_after"] for r in with_normality]
        before = [r["score_before"] for r in scores]
        threshold = (max(after) + min(before)) / 2
        assert max(after) < threshold < min(before), "the normality should lower every score here"
        client.put(f"/v1/lines/{LINE}/threshold", headers=AUTH, json={"value": threshold})
        answer = _inspect(client, *files).json()
        results = answer["results"]
        assert [(r["verdict_before"], r["verdict_after"]) for r in results] == [("NG", "OK")] * 3
        assert all(r["accepted_by"] == ["broken"] and not r["accepted_combined"] for r in results)
        audit = client.get(f"/v1/lines/{LINE}/audit", headers=AUTH, params={"action": "inspect", "limit": 3})
        by_id = {e["id"]: e["details"] for e in audit.json()["entries"]}
        for result in results:
            logged = by_id[result["audit_id"]]
            fields = ("verdict_before", "verdict_after", "accepted_by", "accepted_combined", "threshold")
            assert {k: logged[k] for k in fields} == {k: result[k] for k in fields}
    finally:
        client.delete(f"/v1/lines/{LINE}/normalities/broken", headers=AUTH)


def test_a_stale_threshold_is_reported_and_decides_nothing(client: TestClient, database: Path) -> None:
    client.put(f"/v1/lines/{LINE}/threshold", headers=AUTH, json={"value": 1.0})
    with Registry(database) as registry:  # as if the threshold had been calibrated on other weights
        stored = registry.threshold(LINE)
        assert stored is not None and stored.scale is not None
        stored.scale = {**stored.scale, "weights": "sha256:0123456789abcdef"}
        registry.set_threshold(LINE, stored, "test", "other weights")
    status = client.get(f"/v1/lines/{LINE}/threshold", headers=AUTH).json()["status"]
    assert status.startswith("stale:") and "weights" in status
    result = _inspect(client, ("a.png", _png())).json()["results"][0]
    assert result["verdict_after"] == "undecided"
    assert "another detector score scale" in result["verdict_reason"]


def test_bad_limits_and_a_region_of_another_aspect_ratio_are_422_and_log_nothing(
    client: TestClient, database: Path, tmp_path: Path
) -> None:
    client.put(f"/v1/lines/{LINE}/threshold", headers=AUTH, json={"value": 1.0})
    for limits, word in (({"max_area": -3}, "max_area"), ({"max_length": "2 mm"}, "pixel_size_mm")):
        before = client.get(f"/v1/lines/{LINE}/normalities", headers=AUTH).json()
        response = client.post(f"/v1/lines/{LINE}/normalities", headers=AUTH, json={"text": "scratch", **limits})
        assert response.status_code == 422 and word in response.json()["detail"], response.text
        assert client.get(f"/v1/lines/{LINE}/normalities", headers=AUTH).json() == before
    wide = tmp_path / "wide.png"
    Image.new("L", (200, 100), 255).save(wide)
    with Registry(database) as registry:
        LineModel.load(registry, LINE).add(registry, "scratch", 1.0, "test", limits={"region": str(wide)})
    try:
        audit_before = client.get(f"/v1/lines/{LINE}/audit", headers=AUTH, params={"action": "inspect"}).json()
        response = _inspect(client, ("square.png", _png(64, 64)))
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "bad_decision_input"
        assert "aspect ratio" in response.json()["detail"] and "square.png" in response.json()["detail"]
        assert client.get(f"/v1/lines/{LINE}/audit", headers=AUTH, params={"action": "inspect"}).json() == audit_before
        ok = _inspect(client, ("wide.png", _png(128, 64)))
        assert ok.status_code == 200, ok.text
    finally:
        client.delete(f"/v1/lines/{LINE}/normalities/scratch", headers=AUTH)
