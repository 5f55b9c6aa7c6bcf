"""The REST service through FastAPI's test client: every endpoint, and bad input never a 500."""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from helpers.service_api import assert_error
from normadd.config import LineConfig
from normadd.registry.store import NormalityRecord, Registry
from normadd.serve.app import create_app
from normadd.serve.authority import secret_matches
from normadd.serve.settings import ServiceConfig

KEY = "station-1-secret"
AUTH = {"X-API-Key": KEY}
LINE = "bottle-line"


def _png(size: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("NORMADD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        patch.delenv("NORMADD_API_KEYS", raising=False)
        settings = ServiceConfig(
            line=LINE,
            line_config=LineConfig(class_name="bottle", backbone="tiny-random"),
            database=tmp_path_factory.mktemp("db") / "normadd.db",
            api_keys={"station-1": KEY},
            max_upload_bytes=2_000_000,
            max_images_per_request=4,
            max_image_pixels=1_000_000,
            batch_wait_ms=20,
            device="cpu",
        )
        with TestClient(create_app(settings)) as test_client:
            yield test_client


def _stored(client: TestClient) -> tuple[Any, Any]:
    """Everything a failed request must leave as it was."""
    normalities = client.get(f"/v1/lines/{LINE}/normalities", headers=AUTH).json()
    audit = client.get(f"/v1/lines/{LINE}/audit", headers=AUTH, params={"limit": 1000}).json()
    return normalities, audit


def _inspect(client: TestClient, *files: tuple[str, bytes], **params: Any) -> Any:
    return client.post(
        f"/v1/lines/{LINE}/inspect",
        headers=AUTH,
        files=[("images", (name, data, "application/octet-stream")) for name, data in files],
        params=params,
    )


def test_health_needs_no_key_and_the_page_and_docs_are_served(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert "<title>normadd" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {f"/v1/lines/{{line}}/{p}" for p in ("inspect", "normalities", "audit")} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_inspect_returns_scores_for_one_or_many_images_and_audits_each(client: TestClient, bottle_dir: Path) -> None:
    bottle = (bottle_dir / "test" / "broken_large" / "000.png").read_bytes()
    response = _inspect(client, ("000.png", bottle), ("noise.png", _png()))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["000.png", "noise.png"]
    assert all(r["maps"] is None for r in results)
    entries = client.get(f"/v1/lines/{LINE}/audit", headers=AUTH, params={"action": "inspect", "limit": 2}).json()
    logged = {e["id"]: e["details"] for e in entries["entries"]}
    for result in results:
        assert logged[result["audit_id"]]["image_sha256"] == result["sha256"]
        assert logged[result["audit_id"]]["score_before"] == result["score_before"]


def test_inspect_with_maps_returns_three_pngs(client: TestClient) -> None:
    result = _inspect(client, ("a.png", _png()), maps="true").json()["results"][0]
    for kind in ("before", "suppression", "after"):
        picture = Image.open(io.BytesIO(base64.b64decode(result["maps"][kind])))
        assert picture.format == "PNG" and picture.size == (256, 256)


def test_adding_a_normality_lowers_the_score_and_removing_it_restores_it(client: TestClient) -> None:
    image = ("a.png", _png(seed=3))
    before = _inspect(client, image).json()["results"][0]
    added = client.post(
        f"/v1/lines/{LINE}/normalities", headers=AUTH, json={"text": "contamination", "strength": 1.0, "why": "ok"}
    )
    assert added.status_code == 201, added.text
    assert added.json()["added_by"] == "station-1" and added.json()["phrases"]
    listed = client.get(f"/v1/lines/{LINE}/normalities", headers=AUTH).json()["normalities"]
    assert [n["name"] for n in listed] == ["contamination"]
    during = _inspect(client, image).json()
    assert during["normalities"] == [{"name": "contamination", "strength": 1.0}]
    assert during["results"][0]["score_after"] < before["score_after"]
    removed = client.delete(f"/v1/lines/{LINE}/normalities/contamination", headers=AUTH, params={"why": "revoked"})
    assert removed.status_code == 200, removed.text
    after = _inspect(client, image).json()["results"][0]
    assert after["score_after"] == pytest.approx(before["score_after"], rel=1e-5)
    actions = [e["action"] for e in client.get(f"/v1/lines/{LINE}/audit", headers=AUTH).json()["entries"][:4]]
    assert actions == ["inspect", "normality.remove", "inspect", "normality.add"]


@pytest.mark.parametrize(
    ("files", "status", "code", "words"),
    [
        ([("empty.png", b"")], 422, "bad_image", ["empty.png", "empty"]),
        ([("notes.txt", b"just some text, not an image")], 422, "bad_image", ["notes.txt", "not an image"]),
        ([("cut.png", _png(128)[:300])], 422, "bad_image", ["cut.png", "truncated"]),
        ([("good.png", _png()), ("bad.jpg", b"\xff\xd8\xff garbage")], 422, "bad_image", ["bad.jpg"]),
        ([("huge.png", _png(1100))], 413, "upload_too_large", ["bytes"]),
        ([(f"{i}.png", _png(16)) for i in range(5)], 413, "too_many_images", ["at most 4"]),
        ([], 422, "invalid_request", ["images"]),
    ],
)
def test_bad_uploads_are_a_clear_4xx_and_log_nothing(
    client: TestClient, files: list[tuple[str, bytes]], status: int, code: str, words: list[str]
) -> None:
    stored = _stored(client)
    assert_error(_inspect(client, *files), status, code, *words)
    assert _stored(client) == stored


def test_an_image_over_the_pixel_limit_is_refused(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (1200, 1000), (10, 10, 10)).save(buffer, format="PNG")  # tiny file, 1.2 MP
    stored = _stored(client)
    assert_error(_inspect(client, ("wide.png", buffer.getvalue())), 422, "bad_image", "1200x1000", "pixels")
    assert _stored(client) == stored


def test_a_chunked_upload_over_the_limit_is_refused_while_streaming(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 100_000

    response = client.post(
        f"/v1/lines/{LINE}/inspect",
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"},
        content=chunks(),
    )
    assert_error(response, 413, "upload_too_large")


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"text": "x" * 100_000}, 413, "upload_too_large", ["bytes"]),
        ({"text": "   "}, 422, "bad_text", ["empty"]),
        ({"text": ""}, 422, "bad_text", ["empty"]),
        ({"text": "scratch", "strength": 1.5}, 422, "invalid_request", ["strength"]),
        ({"text": "scr\x1b[2Jatch"}, 422, "bad_text", ["control characters", "scr\\x1b[2Jatch"]),
        ({"strength": 0.5}, 422, "invalid_request", ["text"]),
    ],
)
def test_bad_normalities_are_a_clear_4xx_and_change_nothing(
    client: TestClient, body: dict[str, Any], status: int, code: str, words: list[str]
) -> None:
    stored = _stored(client)
    assert_error(client.post(f"/v1/lines/{LINE}/normalities", headers=AUTH, json=body), status, code, *words)
    assert _stored(client) == stored


def test_a_duplicate_normality_is_409_and_keeps_the_first(client: TestClient) -> None:
    first = client.post(f"/v1/lines/{LINE}/normalities", headers=AUTH, json={"text": "broken", "strength": 0.4})
    assert first.status_code == 201
    stored = _stored(client)
    second = client.post(f"/v1/lines/{LINE}/normalities", headers=AUTH, json={"text": "broken", "strength": 0.9})
    assert_error(second, 409, "duplicate_normality", "already active")
    assert _stored(client) == stored
    assert _inspect(client, ("a.png", _png())).json()["normalities"] == [{"name": "broken", "strength": 0.4}]
    client.delete(f"/v1/lines/{LINE}/normalities/broken", headers=AUTH)


def test_unknown_line_and_unknown_normality_are_404(client: TestClient) -> None:
    stored = _stored(client)
    assert_error(_inspect_line(client, "line-9"), 404, "unknown_line", "line-9", LINE)
    assert_error(client.get("/v1/lines/line-9/normalities", headers=AUTH), 404, "unknown_line")
    assert_error(client.get("/v1/lines/line-9/audit", headers=AUTH), 404, "unknown_line")
    assert_error(client.post("/v1/lines/line-9/normalities", headers=AUTH, json={"text": "dent"}), 404, "unknown_line")
    assert_error(client.delete(f"/v1/lines/{LINE}/normalities/dent", headers=AUTH), 404, "unknown_normality", "dent")
    assert _stored(client) == stored


def _inspect_line(client: TestClient, line: str) -> Any:
    return client.post(f"/v1/lines/{line}/inspect", headers=AUTH, files=[("images", ("a.png", _png(), "image/png"))])


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong-key-123"}, {"X-API-Key": ""}])
def test_every_v1_route_needs_a_valid_key(client: TestClient, headers: dict[str, str]) -> None:
    stored = _stored(client)
    requests = [
        client.get("/v1/lines", headers=headers),
        client.get(f"/v1/lines/{LINE}/normalities", headers=headers),
        client.post(f"/v1/lines/{LINE}/normalities", headers=headers, json={"text": "dent"}),
        client.delete(f"/v1/lines/{LINE}/normalities/dent", headers=headers),
        client.get(f"/v1/lines/{LINE}/audit", headers=headers),
        client.post(f"/v1/lines/{LINE}/inspect", headers=headers, files=[("images", ("a.png", _png(), "image/png"))]),
    ]
    for response in requests:
        assert_error(response, 401, "unauthorized", "X-API-Key")
    assert _stored(client) == stored


def test_concurrent_requests_share_forward_passes(client: TestClient) -> None:
    app = client.app
    service = app.state.service  # type: ignore[attr-defined]
    batcher = service.lines[LINE].batcher
    passes, images = batcher.stats.passes, batcher.stats.images
    tensors = [np.random.default_rng(i).random((1, 3, 80, 80), dtype=np.float32) for i in range(8)]

    async def eight_at_once() -> list[Any]:
        import torch

        return await asyncio.gather(*(batcher.submit(torch.from_numpy(t), LINE) for t in tensors))

    results = client.portal.call(eight_at_once)  # type: ignore[union-attr]
    assert batcher.stats.images - images == 8
    assert batcher.stats.passes - passes < 8
    single = service.lines[LINE].model.explain(__import__("torch").from_numpy(tensors[5]))
    assert float(results[5].after_scores[0]) == pytest.approx(float(single.after_scores[0]), rel=1e-4)


def test_no_api_key_configured_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NORMADD_API_KEYS", raising=False)
    settings = ServiceConfig(line="l", line_config=LineConfig(class_name="bottle"), database=tmp_path / "r.db")
    with pytest.raises(Exception, match="no API key configured"):
        create_app(settings)


def test_service_config_reads_database_and_keys_from_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMADD_API_KEYS", "station-2=another-secret")
    path = tmp_path / "line.yaml"
    path.write_text(
        "class_name: bottle\nbackbone: tiny-random\ndatabase: data/normadd.db\n"
        "service:\n  line: line-7\n  api_keys: {station-1: first-secret}\n  batch_wait_ms: 2\n"
    )
    config = ServiceConfig.from_yaml(path)
    assert config.line == "line-7" and config.database == tmp_path / "data" / "normadd.db"
    assert sorted(config.api_keys) == ["station-1", "station-2"]
    assert secret_matches("another-secret", config.api_keys["station-2"].secret_hash)
    assert "first-secret" not in repr(config)
    path.write_text("class_name: bottle\nservice:\n  port: 1\n")
    with pytest.raises(Exception, match="unknown service keys"):
        ServiceConfig.from_yaml(path)


def test_changes_made_from_the_cli_reach_the_running_service(client: TestClient) -> None:
    database = client.app.state.service.settings.database  # type: ignore[attr-defined]
    with Registry(database) as cli_registry:  # another connection, as `normadd normality add` opens
        cli_registry.add_normality(LINE, NormalityRecord("scratch", "scratch", 0.6), "alice", "from the CLI")
        assert _inspect(client, ("a.png", _png())).json()["normalities"] == [{"name": "scratch", "strength": 0.6}]
        cli_registry.remove_normality(LINE, "scratch", "alice")
    assert _inspect(client, ("a.png", _png())).json()["normalities"] == []


def test_a_normality_can_also_be_removed_by_query_parameter(client: TestClient) -> None:
    client.post(f"/v1/lines/{LINE}/normalities", headers=AUTH, json={"text": "dent"})
    removed = client.delete(f"/v1/lines/{LINE}/normalities", headers=AUTH, params={"name": "dent", "why": "no"})
    assert removed.status_code == 200 and removed.json()["name"] == "dent"
    assert_error(client.delete(f"/v1/lines/{LINE}/normalities", headers=AUTH), 422, "invalid_request", "name")


def test_wrong_routes_methods_and_bodies_are_json_errors(client: TestClient) -> None:
    assert_error(client.get("/v2/anything", headers=AUTH), 404, "not_found")
    assert_error(client.put(f"/v1/lines/{LINE}/normalities", headers=AUTH), 405, "method_not_allowed")
    assert_error(
        client.post(f"/v1/lines/{LINE}/inspect", headers=AUTH, json={"x": 1}), 422, "invalid_request", "images"
    )
    assert_error(
        client.post(f"/v1/lines/{LINE}/normalities", headers={**AUTH, "Content-Type": "application/json"}, content="{"),
        422,
        "invalid_request",
    )
    assert_error(
        client.get(f"/v1/lines/{LINE}/audit", headers=AUTH, params={"limit": 0}), 422, "invalid_request", "limit"
    )


def test_config_normalities_seed_a_new_line_and_the_registry_wins_after(tmp_path: Path) -> None:
    def settings(normalities: list[str]) -> ServiceConfig:
        config = LineConfig.from_dict({"class_name": "bottle", "backbone": "tiny-random", "normalities": normalities})
        return ServiceConfig(
            line="seeded", line_config=config, database=tmp_path / "r.db", api_keys={"a": KEY}, device="cpu"
        )

    with TestClient(create_app(settings(["broken:0.5"]))) as first:
        listed = first.get("/v1/lines/seeded/normalities", headers=AUTH).json()["normalities"]
        assert [(n["name"], n["strength"], n["added_by"]) for n in listed] == [("broken", 0.5, "normadd serve")]
        first.delete("/v1/lines/seeded/normalities/broken", headers=AUTH, params={"why": "not any more"})
    with TestClient(create_app(settings(["broken:0.5", "scratch"]))) as restarted:
        assert restarted.get("/v1/lines/seeded/normalities", headers=AUTH).json()["normalities"] == []
        assert _inspect_line(restarted, "seeded").json()["normalities"] == []


def test_docs_page_loads_swagger_ui_from_the_service_itself(client: TestClient) -> None:
    html = client.get("/docs").text
    assert "http://" not in html and "https://" not in html, "the /docs page names an outside server"
    scripts = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(s.endswith("swagger-ui-bundle.js") for s in scripts)
    for asset in scripts:
        assert client.get(asset).status_code == 200, asset


def _scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_requests_by_route_and_status_passes_batch_sizes_and_verdicts(client: TestClient) -> None:
    before = _scrape(client)
    assert _inspect(client, ("a.png", _png()), ("b.png", _png(seed=1))).status_code == 200
    assert client.get("/v1/lines").status_code == 401
    assert client.get("/v1/lines/no-such-line-3f9a/audit", headers=AUTH).status_code == 404
    assert client.get("/nowhere-7c1e").status_code == 404
    client.app.state.service.metrics.record_verdicts(LINE, ["OK", "NG", "NG"])  # type: ignore[attr-defined]
    after = _scrape(client)

    inspect_route = "/v1/lines/{line}/inspect"
    requests = "normadd_http_requests_total"
    assert _delta(before, after, requests, method="POST", route=inspect_route, status="200") == 1
    assert _delta(before, after, requests, method="GET", route="/v1/lines", status="401") == 1
    assert _delta(before, after, requests, method="GET", route="/v1/lines/{line}/audit", status="404") == 1
    assert _delta(before, after, requests, method="GET", route="unmatched", status="404") == 1
    latency = "normadd_http_request_duration_seconds_count"
    assert _delta(before, after, latency, method="POST", route=inspect_route) == 1
    assert _delta(before, after, "normadd_images_inspected_total", line=LINE) == 2
    assert _delta(before, after, "normadd_forward_passes_total", line=LINE) == 1
    assert _delta(before, after, "normadd_batch_images_sum", line=LINE) == 2
    assert _delta(before, after, "normadd_batch_images_bucket", line=LINE, le="1.0") == 0
    assert _delta(before, after, "normadd_batch_images_bucket", line=LINE, le="2.0") == 1
    assert _delta(before, after, "normadd_verdicts_total", line=LINE, verdict="NG") == 2
    assert _delta(before, after, "normadd_verdicts_total", line=LINE, verdict="OK") == 1
    text = client.get("/metrics").text
    assert "no-such-line-3f9a" not in text and "nowhere-7c1e" not in text, "raw paths became label values"


def test_inspections_count_the_verdicts_they_gave(client: TestClient) -> None:
    def verdicts(*files: tuple[str, bytes]) -> list[str]:
        response = _inspect(client, *files)
        assert response.status_code == 200, response.text
        return [item["verdict_after"] for item in response.json()["results"]]

    threshold = f"/v1/lines/{LINE}/threshold"
    before = _scrape(client)
    try:
        assert client.put(threshold, headers=AUTH, json={"value": 0.0, "why": "every part NG"}).status_code == 200
        assert verdicts(("a.png", _png()), ("b.png", _png(seed=1))) == ["NG", "NG"]
        assert client.put(threshold, headers=AUTH, json={"value": 1e9, "why": "every part OK"}).status_code == 200
        assert verdicts(("c.png", _png(seed=2))) == ["OK"]
    finally:
        assert client.delete(threshold, headers=AUTH).status_code == 200
    assert verdicts(("d.png", _png(seed=3))) == ["undecided"]
    after = _scrape(client)
    names = ("NG", "OK", "undecided")
    counted = {v: _delta(before, after, "normadd_verdicts_total", line=LINE, verdict=v) for v in names}
    assert counted == {"NG": 2, "OK": 1, "undecided": 1}


def test_a_refused_upload_is_counted_under_its_route(client: TestClient) -> None:
    before = _scrape(client)
    too_big = b"\0" * 2_100_000
    assert_error(_inspect(client, ("big.png", too_big)), 413, "upload_too_large")
    after = _scrape(client)
    route = "/v1/lines/{line}/inspect"
    assert _delta(before, after, "normadd_http_requests_total", method="POST", route=route, status="413") == 1


@pytest.mark.parametrize(
    "body",
    [
        {"text": "dent", "strength": "0.5"},
        {"text": "dent", "strength": True},
        {"text": "dent", "strenght": 0.5},  # a misspelt key is refused, not ignored
    ],
)
def test_a_normality_body_is_read_strictly(client: TestClient, body: dict[str, Any]) -> None:
    stored = _stored(client)
    assert_error(client.post(f"/v1/lines/{LINE}/normalities", headers=AUTH, json=body), 422, "invalid_request")
    assert _stored(client) == stored


def test_every_v1_error_is_documented_as_the_error_body_it_is(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                for status in ("400", "401", "404", "413", "422"):
                    schema = operation["responses"][status]["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, status)
    body = client.post(
        f"/v1/lines/{LINE}/normalities", headers={**AUTH, "Content-Type": "application/json"}, content=b"\xff{"
    )
    assert_error(body, 400, "malformed_body")
