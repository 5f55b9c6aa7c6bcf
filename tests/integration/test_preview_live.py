"""The Preview button in real headless Chromium against ``normadd serve`` under uvicorn: the flip
table shows each part that would pass, with its thumbnail and suppression map, and nothing changes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers.chromium_cdp import Chromium, find_chromium
from normadd.registry.store import Registry, ThresholdRecord

KEY = "preview-live-secret"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("preview-live")
    config = folder / "line.yaml"
    config.write_text(
        "class_name: bottle\nbackbone: tiny-random\nretain:\n  images: 20\n"
        "database: normadd.db\nservice:\n  line: bottle\n"
    )
    port = _free_port()
    env = {
        **os.environ,
        "NORMADD_API_KEYS": f"browser={KEY}",
        "NORMADD_CACHE_DIR": str(folder / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    log = folder / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "normadd", "serve", "--config", str(config), "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"normadd serve did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield url, folder / "normadd.db"
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_the_preview_button_shows_the_flip_table_and_changes_nothing(
    server: tuple[str, Path], bottle_dir: Path, tmp_path: Path
) -> None:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); CI always runs this test")
    url, database = server
    paths = [bottle_dir / "test" / group / "000.png" for group in ("broken_large", "broken_small", "contamination")]
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=60) as client:
        files = [("images", (f"{p.parent.name}.png", p.read_bytes(), "image/png")) for p in paths]
        inspected = client.post("/v1/lines/bottle/inspect", files=files)
        assert inspected.status_code == 200, inspected.text
        scores = [item["score_after"] for item in inspected.json()["results"]]
    with Registry(database) as registry:  # every part NG now: the candidate's suppression decides the flips
        registry.set_threshold("bottle", ThresholdRecord(min(scores) * 0.99, None, "set"), "qa", "test")

    with Chromium(binary, tmp_path / "profile") as browser:
        browser.navigate(f"{url}/")
        browser.evaluate(
            f"document.getElementById('api-key').value = {KEY!r}; document.getElementById('connect').click()"
        )
        browser.wait_for("document.querySelector('#line option')?.value === 'bottle'")
        browser.evaluate(
            "document.getElementById('normality-text').value = 'broken';"
            "document.getElementById('preview-recent').value = '10';"
            "document.getElementById('preview-normality').click()"
        )
        browser.wait_for("document.querySelectorAll('#preview-table tbody tr.flip').length > 0", timeout=60)
        summary = browser.evaluate("document.getElementById('preview-summary').textContent")
        assert "'broken' on 3 part(s)" in summary and "Nothing was changed" in summary, summary
        pictures = browser.evaluate(
            "[...document.querySelectorAll('#preview-table tbody img')]"
            ".filter(img => img.complete && img.naturalWidth === 256).length"
        )
        rows = browser.evaluate("document.querySelectorAll('#preview-table tbody tr.flip').length")
        assert pictures == 2 * rows
        assert "NG → OK" in browser.evaluate("document.querySelector('#preview-table tbody td.verdict').textContent")
        print(f"screenshot: {browser.screenshot(ARTIFACTS / 'preview_page.png')}")

    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=30) as client:
        assert client.get("/v1/lines/bottle/normalities").json()["normalities"] == []
        entry = client.get("/v1/lines/bottle/audit", params={"limit": 1}).json()["entries"][0]
        assert (entry["action"], entry["who"], entry["details"]["flips"]) == ("normality.preview", "browser", rows)
