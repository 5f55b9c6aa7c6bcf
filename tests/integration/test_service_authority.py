"""Authority on the line over REST: scoped keys, two-person approval, and the audit chain at start-up."""

from __future__ import annotations

import hashlib
import io
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from normadd.config import LineConfig
from normadd.errors import NormaddError
from normadd.registry.store import Registry
from normadd.serve.app import create_app
from normadd.serve.authority import ANY_KEY, PUBLIC, ROUTE_SCOPES, SCOPES
from normadd.serve.settings import ServiceConfig

LINE = "pharma-line"
SECRETS = {
    "station-1": "station-1-secret-value",
    "alice": "alice-quality-engineer-secret",
    "bob": "bob-approver-secret-value",
    **{f"only-{scope}": f"only-{scope}-secret-value" for scope in SCOPES},
}
SCOPES_OF = {
    "station-1": ["inspect"],
    "alice": ["inspect", "preview", "change", "audit"],
    "bob": ["inspect", "approve", "audit"],
    **{f"only-{scope}": [scope] for scope in SCOPES},
}


def auth(name: str) -> dict[str, str]:
    return {"X-API-Key": SECRETS[name]}


def _png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _settings(database: Path, **extra: Any) -> ServiceConfig:
    keys = {name: {"secret": SECRETS[name], "scopes": SCOPES_OF[name]} for name in SECRETS}
    config = LineConfig(class_name="bottle", backbone="tiny-random", approval="required", approval_expires_hours=24)
    return ServiceConfig(line=LINE, line_config=config, database=database, api_keys=keys, device="cpu", **extra)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("NORMADD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        patch.delenv("NORMADD_API_KEYS", raising=False)
        with TestClient(create_app(_settings(tmp_path_factory.mktemp("db") / "normadd.db"))) as test_client:
            yield test_client


def _request(client: TestClient, method: str, path: str, key: str | None) -> Any:
    url = path.format(line=LINE, name="no-such-normality", change_id=999999)
    return client.request(method, url, headers=auth(key) if key else {})


@pytest.mark.parametrize("scope", [*SCOPES, None])
def test_every_route_allows_or_refuses_each_scope_as_its_table_says(client: TestClient, scope: str | None) -> None:
    key = f"only-{scope}" if scope else None
    operations = [
        (method.upper(), path) for path, item in client.get("/openapi.json").json()["paths"].items() for method in item
    ]
    assert len(operations) >= 10
    wrong = []
    for method, path in operations:
        needed = ROUTE_SCOPES.get((method, path))
        assert needed is not None, f"{method} {path} has no scope decision: add it to ROUTE_SCOPES"
        status = _request(client, method, path, key).status_code
        if needed == PUBLIC:
            expected_refusal = None
        elif key is None:
            expected_refusal = 401
        elif needed == ANY_KEY or scope in (needed, "admin"):
            expected_refusal = None
        else:
            expected_refusal = 403
        if (expected_refusal is None and status in (401, 403)) or (expected_refusal and status != expected_refusal):
            wrong.append(f"{method} {path} with {key}: {status} (needs {needed})")
    assert not wrong, wrong


def test_a_refusal_names_the_missing_scope_and_is_audited(client: TestClient) -> None:
    refused = client.post(f"/v1/lines/{LINE}/normalities", headers=auth("station-1"), json={"text": "scratch"})
    assert refused.status_code == 403, refused.text
    assert refused.json() == {
        "error": "forbidden",
        "detail": "key 'station-1' lacks the 'change' scope that POST /v1/lines/{line}/normalities needs "
        "(it has: inspect)",
    }
    entries = client.get(f"/v1/lines/{LINE}/audit", headers=auth("bob"), params={"action": "access.denied"}).json()
    newest = entries["entries"][0]
    assert newest["who"] == "station-1"
    assert newest["details"] == {
        "method": "POST",
        "route": "/v1/lines/{line}/normalities",
        "needed": "change",
        "scopes": ["inspect"],
    }
    assert client.get("/v1/me", headers=auth("alice")).json() == {"name": "alice", "scopes": sorted(SCOPES_OF["alice"])}


def _inspect(client: TestClient) -> list[dict[str, Any]]:
    files = [("images", ("a.png", _png(), "image/png"))]
    response = client.post(f"/v1/lines/{LINE}/inspect", headers=auth("station-1"), files=files)
    assert response.status_code == 200, response.text
    return list(response.json()["normalities"])


def test_a_change_applies_only_when_a_second_person_approves(client: TestClient) -> None:
    proposed = client.post(
        f"/v1/lines/{LINE}/normalities", headers=auth("alice"), json={"text": "contamination", "why": "CAPA-17"}
    )
    assert proposed.status_code == 202, proposed.text
    change = proposed.json()
    assert change["status"] == "pending" and change["proposed_by"] == "alice" and "contaminated" in change["summary"]
    assert "embedding" not in change["payload"]
    listed = client.get(f"/v1/lines/{LINE}/changes", headers=auth("station-1")).json()["changes"]
    assert [c["id"] for c in listed] == [change["id"]]

    assert _inspect(client) == []  # scored without the pending change
    approve = f"/v1/lines/{LINE}/changes/{change['id']}/approve"
    own = client.post(approve, headers=auth("alice"))
    assert own.status_code == 403  # alice lacks approve
    assert client.post(approve, headers=auth("station-1")).status_code == 403
    approved = client.post(approve, headers=auth("bob"), json={"why": "phrases checked"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["decided_by"] == "bob"
    assert _inspect(client) == [{"name": "contamination", "strength": 1.0}]

    entries = client.get(f"/v1/lines/{LINE}/audit", headers=auth("alice"), params={"limit": 50}).json()["entries"]
    kept = ("change.propose", "normality.add", "change.approve")
    mine = [(e["action"], e["who"]) for e in entries if e["action"] in kept]
    assert mine[:3] == [("change.approve", "bob"), ("normality.add", "alice"), ("change.propose", "alice")]
    assert entries[0]["row_hash"] and entries[0]["prev_hash"] == entries[1]["row_hash"]

    removal = client.delete(f"/v1/lines/{LINE}/normalities/contamination", headers=auth("alice"), params={"why": "x"})
    assert removal.status_code == 202
    rejected = client.post(
        f"/v1/lines/{LINE}/changes/{removal.json()['id']}/reject", headers=auth("bob"), json={"why": "keep it"}
    )
    assert rejected.json()["status"] == "rejected"
    assert _inspect(client) == [{"name": "contamination", "strength": 1.0}]


def test_a_key_with_both_scopes_still_cannot_approve_its_own_change(client: TestClient) -> None:
    proposed = client.delete(f"/v1/lines/{LINE}/normalities/contamination", headers=auth("only-admin"))
    assert proposed.status_code == 202, proposed.text
    own = client.post(f"/v1/lines/{LINE}/changes/{proposed.json()['id']}/approve", headers=auth("only-admin"))
    assert own.status_code == 403 and own.json()["error"] == "own_change"
    by_bob = client.post(f"/v1/lines/{LINE}/changes/{proposed.json()['id']}/approve", headers=auth("bob"))
    assert by_bob.status_code == 200
    assert _inspect(client) == []


def test_an_expired_change_cannot_be_approved(client: TestClient) -> None:
    registry = client.app.state.service.registry  # type: ignore[attr-defined]
    proposed = client.post(f"/v1/lines/{LINE}/normalities", headers=auth("alice"), json={"text": "dent"}).json()
    later = datetime.now(UTC) + timedelta(hours=25)
    registry.clock = lambda: later
    try:
        late = client.post(f"/v1/lines/{LINE}/changes/{proposed['id']}/approve", headers=auth("bob"))
    finally:
        registry.clock = lambda: datetime.now(UTC)
    assert late.status_code == 409 and "expired" in late.json()["detail"]
    assert _inspect(client) == []
    expired = client.get(f"/v1/lines/{LINE}/changes", headers=auth("bob"), params={"status": "expired"}).json()
    assert [c["id"] for c in expired["changes"]] == [proposed["id"]]


def test_no_secret_is_in_the_database_or_the_log(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        for name in SECRETS:
            client.get("/v1/me", headers=auth(name))
        client.get("/v1/me", headers={"X-API-Key": "wrong-secret-value"})
    chain = client.get("/v1/audit/verify", headers=auth("only-audit")).json()
    assert chain["ok"] and chain["rows"] > 5, chain
    database = client.app.state.service.registry.path  # type: ignore[attr-defined]
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    for secret in SECRETS.values():
        assert secret.encode() not in stored
        assert secret not in caplog.text


def test_the_service_refuses_to_start_on_a_broken_chain_unless_told(tmp_path: Path) -> None:
    database = tmp_path / "r.db"
    with TestClient(create_app(_settings(database))):
        pass
    with sqlite3.connect(database) as db:
        db.execute("DROP TRIGGER audit_log_no_update")
        db.execute("UPDATE audit_log SET who = 'mallory' WHERE id = 1")
    with pytest.raises(NormaddError, match="broken at audit row 1"):
        create_app(_settings(database))
    create_app(_settings(database, allow_broken_audit_chain=True))
    with Registry(database) as registry:
        [finding] = registry.audit(action="audit.chain_broken")
    assert finding.details["row_id"] == 1 and finding.who == "normadd serve"


def test_a_route_without_a_scope_decision_or_without_the_key_check_stops_the_app() -> None:
    from fastapi import Depends, FastAPI

    from normadd.serve.app import _check_route_scopes

    def calling_key() -> str:
        return "k"

    undecided = FastAPI()
    undecided.get("/v1/new-thing")(lambda: {})
    with pytest.raises(RuntimeError, match="GET /v1/new-thing has no scope: add it to ROUTE_SCOPES"):
        _check_route_scopes(undecided, calling_key)
    unchecked = FastAPI()
    unchecked.get("/v1/audit/verify")(lambda: {})
    with pytest.raises(RuntimeError, match="does not take the Caller dependency"):
        _check_route_scopes(unchecked, calling_key)
    checked = FastAPI()
    checked.get("/v1/audit/verify")(lambda who=Depends(calling_key): {})  # noqa: B008
    _check_route_scopes(checked, calling_key)


def test_thresholds_staging_and_activation_wait_for_approval_too(client: TestClient) -> None:
    threshold = f"/v1/lines/{LINE}/threshold"
    cleared = client.delete(threshold, headers=auth("alice"))
    assert cleared.status_code == 409 and "nothing to clear" in cleared.json()["detail"]
    proposed = client.put(threshold, headers=auth("alice"), json={"value": 0.5, "why": "set by hand"})
    assert proposed.status_code == 202, proposed.text
    assert proposed.json()["kind"] == "threshold.set" and proposed.json()["payload"]["value"] == 0.5
    assert client.get(threshold, headers=auth("station-1")).json()["value"] is None
    assert client.post(f"/v1/lines/{LINE}/changes/{proposed.json()['id']}/approve", headers=auth("bob")).is_success
    stored = client.get(threshold, headers=auth("station-1")).json()
    assert (stored["value"], stored["set_by"], stored["why"]) == (0.5, "alice", "set by hand")
    clearing = client.delete(threshold, headers=auth("alice"), params={"why": "new detector"})
    assert clearing.status_code == 202 and clearing.json()["kind"] == "threshold.clear"
    rejected = client.post(
        f"/v1/lines/{LINE}/changes/{clearing.json()['id']}/reject", headers=auth("bob"), json={"why": "not yet"}
    )
    assert rejected.json()["status"] == "rejected"
    assert client.get(threshold, headers=auth("station-1")).json()["value"] == 0.5

    until = (datetime.now(UTC) + timedelta(days=14)).isoformat(timespec="seconds")
    body = {"text": "label smudge", "name": "smudge", "staged": True, "until": until, "max_area": 400}
    staged = client.post(f"/v1/lines/{LINE}/normalities", headers=auth("alice"), json=body)
    assert staged.status_code == 202, staged.text
    assert (staged.json()["payload"]["state"], staged.json()["payload"]["limits"]) == ("staged", {"max_area": 400})
    assert client.post(f"/v1/lines/{LINE}/changes/{staged.json()['id']}/approve", headers=auth("bob")).is_success
    listed = client.get(f"/v1/lines/{LINE}/normalities", headers=auth("station-1")).json()["normalities"]
    assert [(n["name"], n["state"]) for n in listed] == [("smudge", "staged")]
    assert _inspect(client) == []  # staged: stored, not applied
    activate = f"/v1/lines/{LINE}/normalities/smudge/activate"
    activating = client.post(activate, headers=auth("alice"), json={"why": "supplier fix late"})
    assert activating.status_code == 202 and activating.json()["kind"] == "normality.activate"
    assert _inspect(client) == []  # scored without the pending activation
    assert client.post(f"/v1/lines/{LINE}/changes/{activating.json()['id']}/approve", headers=auth("bob")).is_success
    assert _inspect(client) == [{"name": "smudge", "strength": 1.0}]
    entries = client.get(f"/v1/lines/{LINE}/audit", headers=auth("bob"), params={"limit": 4}).json()["entries"]
    actions = [(e["action"], e["who"]) for e in entries if e["action"] != "inspect"]
    assert actions[:2] == [("change.approve", "bob"), ("normality.activate", "alice")]
    assert client.get("/v1/audit/verify", headers=auth("only-audit")).json()["ok"]


def test_a_visual_normality_waits_for_approval_with_its_memory_and_hashes(client: TestClient) -> None:
    image = _png(7)
    sha = hashlib.sha256(image).hexdigest()
    before = _inspect(client)  # what earlier tests left active on the line
    examples = f"/v1/lines/{LINE}/examples"
    files = [("images", ("scuff.png", image, "image/png"))]
    refused = client.post(examples, headers=auth("station-1"), files=files)
    assert refused.status_code == 403 and "'change' scope" in refused.json()["detail"]
    proposed = client.post(examples, headers=auth("alice"), files=files, data={"strength": "0.8", "why": "CAPA-21"})
    assert proposed.status_code == 202, proposed.text
    change = proposed.json()
    assert change["kind"] == "normality.add"
    shown = f"add visual normality 'example:scuff' (strength 0.8, 1 example): scuff.png ({sha[:12]})"
    assert change["summary"] == shown
    payload = change["payload"]
    assert payload["kind"] == "visual"
    assert payload["sources"] == [{"image": "scuff.png", "sha256": sha, "mask_sha256": None}]
    assert "memory" not in payload and "embedding" not in payload  # shown without the base64
    assert _inspect(client) == before  # scored without the pending change

    approve = f"/v1/lines/{LINE}/changes/{change['id']}/approve"
    assert client.post(approve, headers=auth("bob"), json={"why": "examples checked"}).is_success
    assert _inspect(client) == [*before, {"name": "example:scuff", "strength": 0.8}]
    listed = client.get(f"/v1/lines/{LINE}/normalities", headers=auth("station-1")).json()["normalities"]
    (visual,) = [n for n in listed if n["name"] == "example:scuff"]
    assert (visual["kind"], visual["added_by"]) == ("visual", "alice")
    entries = client.get(f"/v1/lines/{LINE}/audit", headers=auth("bob"), params={"action": "normality.add"}).json()
    added = entries["entries"][0]
    assert (added["who"], added["details"]["kind"]) == ("alice", "visual")
    assert added["details"]["sources"][0]["sha256"] == sha

    removal = client.delete(f"/v1/lines/{LINE}/normalities/example:scuff", headers=auth("alice"), params={"why": "y"})
    assert removal.status_code == 202, removal.text
    assert client.post(f"/v1/lines/{LINE}/changes/{removal.json()['id']}/approve", headers=auth("bob")).is_success
    assert _inspect(client) == before
    assert client.get("/v1/audit/verify", headers=auth("only-audit")).json()["ok"]
