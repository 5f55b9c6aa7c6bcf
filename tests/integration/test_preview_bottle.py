"""Preview on the real bottle images through the REST service: the flips it predicts are the verdict
changes that adding the normality and inspecting the same parts really gives; bad input changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from normadd.cli import app as cli_app
from normadd.config import LineConfig
from normadd.decisions.thresholds import calibrate_false_reject
from normadd.images import load_image
from normadd.registry.preview import suppression_from_stored
from normadd.registry.retention import RetainedFeatures, RetentionStore, features_from_bytes, features_to_bytes
from normadd.registry.store import LineRecord, Registry, ThresholdRecord
from normadd.serve.app import create_app
from normadd.serve.settings import ServiceConfig

KEY = "preview-secret"
AUTH = {"X-API-Key": KEY}
LINE = "bottle-line"
PER_GROUP = 6
# Largest |score from stored float16 features - score from a fresh pass| allowed; the measured
# value is in docs/how-to/preview-and-go-live.md (benchmarks/bench_preview.py prints it).
FLOAT16_TOLERANCE = 2e-3
MAP_TOLERANCE = 1e-3  # the same for suppression maps (measured: see the how-to page)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Registry]]:
    folder = tmp_path_factory.mktemp("preview")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("NORMADD_OFFLINE", "1")
        patch.setenv("NORMADD_CACHE_DIR", str(folder / "cache"))
        patch.delenv("NORMADD_API_KEYS", raising=False)
        settings = ServiceConfig(
            line=LINE,
            line_config=LineConfig(class_name="bottle", backbone="tiny-random", retain={"images": 200}),
            database=folder / "normadd.db",
            api_keys={"station-1": KEY},
            max_upload_bytes=20_000_000,
            max_images_per_request=8,
            batch_wait_ms=5,
            device="cpu",
        )
        app = create_app(settings)
        with TestClient(app) as client:
            yield client, app.state.service.registry


def _inspect(client: TestClient, paths: list[Path]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for start in range(0, len(paths), 8):
        chunk = paths[start : start + 8]
        files = [("images", (f"{p.parent.name}_{p.name}", p.read_bytes(), "image/png")) for p in chunk]
        response = client.post(f"/v1/lines/{LINE}/inspect", headers=AUTH, files=files)
        assert response.status_code == 200, response.text
        results.update({item["filename"]: item for item in response.json()["results"]})
    return results


def _test_parts(bottle_dir: Path) -> list[Path]:
    groups = sorted(p for p in (bottle_dir / "test").iterdir() if p.is_dir())
    return [path for group in groups for path in sorted(group.glob("*.png"))[:PER_GROUP]]


def test_a_preview_predicts_exactly_what_adding_the_normality_does(
    service: tuple[TestClient, Registry], bottle_dir: Path
) -> None:
    client, registry = service
    good = sorted((bottle_dir / "train" / "good").glob("*.png"))[:20]
    calibration = calibrate_false_reject([r["score_before"] for r in _inspect(client, good).values()], 0.05)
    registry.set_threshold(LINE, ThresholdRecord(calibration.threshold, None, "false-reject"), "qa", "calibrated")
    threshold = calibration.threshold

    parts = _test_parts(bottle_dir)
    now = _inspect(client, parts)
    shown = CliRunner().invoke(cli_app, ["line", "show", LINE, "--db", str(registry.path)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and f"{len(good) + len(parts)} of 200 images" in shown.output, shown.output
    audit_before = client.get(f"/v1/lines/{LINE}/audit", headers=AUTH, params={"limit": 1}).json()["entries"][0]["id"]

    response = client.post(
        f"/v1/lines/{LINE}/normalities/preview", headers=AUTH, json={"text": "broken", "recent": len(parts)}
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["parts"] == len(parts) and report["threshold"] == pytest.approx(threshold)
    assert {item["image"] for item in report["items"]} == set(now)
    assert all(item["source"] == "stored features" for item in report["items"])
    # a preview stores nothing: no normality, one audit row
    assert client.get(f"/v1/lines/{LINE}/normalities", headers=AUTH).json()["normalities"] == []
    new_rows = client.get(f"/v1/lines/{LINE}/audit", headers=AUTH, params={"limit": 100}).json()["entries"]
    new_rows = [row for row in new_rows if row["id"] > audit_before]
    assert [row["action"] for row in new_rows] == ["normality.preview"]
    assert new_rows[0]["details"]["flips"] == len(report["flips"]) and new_rows[0]["details"]["parts"] == len(parts)

    added = client.post(f"/v1/lines/{LINE}/normalities", headers=AUTH, json={"text": "broken", "why": "go-live"})
    assert added.status_code == 201, added.text
    then = _inspect(client, parts)

    real_flips = {name for name in now if now[name]["score_after"] > threshold >= then[name]["score_after"]}
    previewed = {item["image"]: item for item in report["items"]}
    for name, item in previewed.items():
        assert item["score_before"] == pytest.approx(now[name]["score_after"], abs=1e-6)  # float32 map before
        assert abs(item["score_after"] - then[name]["score_after"]) <= FLOAT16_TOLERANCE
    near = {name for name in now if abs(then[name]["score_after"] - threshold) <= FLOAT16_TOLERANCE}
    assert real_flips, "the test needs parts that flip: tiny-random suppresses about half of every map"
    assert {item["image"] for item in report["flips"]} - near == real_flips - near
    for item in report["flips"]:
        assert item["verdict_before"] == "NG" and item["verdict_after"] == "OK"
        assert item["accepted_by_after"] == ["broken"]
        assert item["thumbnail"] and item["suppression"]  # base64 PNGs for the page
    assert report["shares_after"].get("broken", 0) == len(report["flips"])


def test_asking_for_more_parts_than_retained_uses_what_exists_and_says_so(service: tuple[TestClient, Registry]) -> None:
    client, _ = service
    response = client.post(
        f"/v1/lines/{LINE}/normalities/preview", headers=AUTH, json={"text": "contamination", "recent": 5000}
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["parts"] < 5000
    assert any(f"{report['parts']} are retained" in note for note in report["notes"])


def test_a_preview_on_a_line_that_retains_nothing_names_retain(service: tuple[TestClient, Registry]) -> None:
    client, registry = service
    registry.create_line(LineRecord("no-retain", "bottle", backbone="tiny-random"), "qa")
    before = client.get("/v1/lines/no-retain/audit", headers=AUTH).json()["entries"]
    response = client.post("/v1/lines/no-retain/normalities/preview", headers=AUTH, json={"text": "scratch"})
    assert response.status_code == 422 and response.json()["error"] == "bad_request"
    assert "retain: {images: N}" in response.json()["detail"]
    assert client.get("/v1/lines/no-retain/audit", headers=AUTH).json()["entries"] == before


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error", "words"),
    [
        ("post", "normalities/dent/activate", None, 404, "unknown_normality", "no normality named 'dent'"),
        ("post", "normalities/broken/activate", None, 409, "conflict", "already active"),
        ("post", "normalities", {"text": "scratch", "until": "2020-01-01"}, 422, "bad_request", "not in the future"),
        ("post", "normalities", {"text": "scratch", "until": "next friday"}, 422, "bad_request", "ISO 8601"),
        ("post", "normalities/preview", {"text": "broken"}, 422, "bad_request", "already applies"),
        ("post", "normalities/preview", {"text": "scratch", "recent": 0}, 422, "invalid_request", "recent"),
    ],
)
def test_bad_staging_and_preview_requests_are_json_4xx_and_change_nothing(
    service: tuple[TestClient, Registry],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    error: str,
    words: str,
) -> None:
    client, _ = service
    if not client.get(f"/v1/lines/{LINE}/normalities", headers=AUTH).json()["normalities"]:
        client.post(f"/v1/lines/{LINE}/normalities", headers=AUTH, json={"text": "broken"})

    def stored() -> tuple[Any, Any]:
        return (
            client.get(f"/v1/lines/{LINE}/normalities", headers=AUTH).json(),
            client.get(f"/v1/lines/{LINE}/audit", headers=AUTH, params={"limit": 5}).json(),
        )

    before = stored()
    response = getattr(client, method)(f"/v1/lines/{LINE}/{path}", headers=AUTH, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and words in response.json()["detail"], response.json()
    assert stored() == before


def test_staging_then_activating_over_rest_is_audited(service: tuple[TestClient, Registry]) -> None:
    client, _ = service
    staged = client.post(
        f"/v1/lines/{LINE}/normalities",
        headers=AUTH,
        json={"text": "contamination", "staged": True, "until": "2099-12-15", "why": "trial"},
    )
    assert staged.status_code == 201, staged.text
    assert (staged.json()["state"], staged.json()["until"]) == ("staged", "2099-12-15T00:00:00.000+00:00")
    preview = client.post(
        f"/v1/lines/{LINE}/normalities/preview", headers=AUTH, json={"text": "contamination", "recent": 4}
    )
    assert preview.status_code == 200 and preview.json()["staged"] is True
    activated = client.post(
        f"/v1/lines/{LINE}/normalities/contamination/activate", headers=AUTH, json={"why": "supplier agreed"}
    )
    assert activated.status_code == 200 and activated.json()["state"] == "active"
    entry = client.get(f"/v1/lines/{LINE}/audit", headers=AUTH, params={"limit": 1}).json()["entries"][0]
    assert (entry["action"], entry["who"], entry["why"]) == ("normality.activate", "station-1", "supplier agreed")


def test_maps_from_stored_features_match_a_fresh_pass_within_the_measured_tolerance(
    service: tuple[TestClient, Registry], bottle_dir: Path
) -> None:
    client, _ = service
    model = client.app.state.service.lines[LINE].model  # type: ignore[attr-defined]
    paths = [bottle_dir / "test" / group / "001.png" for group in ("broken_large", "contamination", "good")]
    images = torch.stack([load_image(path, model.input_size) for path in paths])
    result = model.explain(images, keep_projected=True)
    assert result.projected is not None and result.grid_size is not None
    detector = model.addition.normality_detector
    candidate = detector.make_normality("scratch")
    fresh = detector.suppression_from_projected(result.projected, result.grid_size, [candidate])
    for precision, tolerance in (("float32", 1e-5), ("float16", MAP_TOLERANCE)):
        stored = [
            features_from_bytes(
                features_to_bytes(
                    RetainedFeatures(result.before[i], [t[i] for t in result.projected], result.grid_size),
                    precision,
                    "test",
                )
            )
            for i in range(len(paths))
        ]
        maps = suppression_from_stored(detector, stored, [candidate])  # what a preview reads
        assert float((maps - fresh).abs().max()) <= tolerance, precision
        assert torch.equal(torch.stack([s.before for s in stored]), result.before)


def test_a_retained_part_that_no_longer_matches_its_hash_is_refused_and_the_rest_previewed(
    service: tuple[TestClient, Registry],
) -> None:
    client, registry = service
    store = RetentionStore.for_line(registry, LINE)
    newest = store.recent(1)[0]
    path = store.image_path(newest)
    path.write_bytes(path.read_bytes() + b"tampered")
    response = client.post(f"/v1/lines/{LINE}/normalities/preview", headers=AUTH, json={"text": "scratch", "recent": 5})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["parts"] == 4 and newest.filename not in {item["image"] for item in report["items"]}
    assert len(report["refused"]) == 1 and "no longer matches its SHA-256" in report["refused"][0]
    assert any("refused" in note for note in report["notes"])
