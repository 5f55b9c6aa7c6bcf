"""The service as users run it: ``normadd serve`` under uvicorn on 127.0.0.1, and its web page
in real headless Chromium (Debian's ``chromium``; skipped outside CI when it is missing).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from helpers.chromium_cdp import Chromium, find_chromium

KEY = "live-test-secret"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("live")
    config = folder / "line.yaml"
    config.write_text("class_name: bottle\nbackbone: tiny-random\ndatabase: normadd.db\nservice:\n  line: bottle\n")
    port = free_port()
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
    server = LiveServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"normadd serve did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield server
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_real_uvicorn_serves_health_auth_and_inspections(live_server: LiveServer, bottle_dir: Path) -> None:
    image = (bottle_dir / "test" / "broken_large" / "000.png").read_bytes()
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        assert client.get("/healthz").json()["lines_loaded"] == ["bottle"]
        assert client.get("/v1/lines").status_code == 401
        response = client.post(
            "/v1/lines/bottle/inspect", headers={"X-API-Key": KEY}, files=[("images", ("000.png", image, "image/png"))]
        )
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["filename"] == "000.png"
    assert KEY not in live_server.log.read_text(), "an API key was written to the log"


def test_the_web_page_adds_a_normality_and_shows_before_suppression_after(
    live_server: LiveServer, bottle_dir: Path, tmp_path: Path
) -> None:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); CI always runs this test")
    image = bottle_dir / "test" / "broken_large" / "000.png"
    with httpx.Client(base_url=live_server.url, headers={"X-API-Key": KEY}, timeout=30) as client:
        files = [("images", ("000.png", image.read_bytes(), "image/png"))]
        score = client.post("/v1/lines/bottle/inspect", files=files).json()["results"][0]["score_before"]
        threshold = client.put("/v1/lines/bottle/threshold", json={"value": score / 2, "why": "browser test"})
        assert threshold.status_code == 200, threshold.text
    with Chromium(binary, tmp_path / "profile") as browser:
        browser.navigate(f"{live_server.url}/")
        browser.evaluate(
            f"document.getElementById('api-key').value = {KEY!r}; document.getElementById('connect').click()"
        )
        browser.wait_for("document.querySelector('#line option')?.value === 'bottle'")
        browser.set_files("#image-file", [image])
        browser.wait_for("document.getElementById('scores').textContent.includes('000.png')")
        # the OK/NG badge: the score is twice the threshold, so the part is NG
        browser.wait_for("document.getElementById('verdict').dataset.verdict === 'NG'")
        badge = browser.evaluate(
            "[document.getElementById('verdict').textContent, document.getElementById('verdict').className,"
            " !document.getElementById('verdict').hidden]"
        )
        assert badge == ["NG", "badge ng", True]
        assert "threshold" in browser.evaluate("document.getElementById('verdict-detail').textContent")

        browser.evaluate(
            "document.getElementById('normality-text').value = 'broken';"
            "document.getElementById('normality-why').value = 'customer accepts broken bottles';"
            "document.getElementById('add-normality').click()"
        )
        browser.wait_for("document.querySelector('#normalities li[data-name=\"broken\"]') !== null")
        browser.wait_for("document.getElementById('scores').textContent.includes('normalities: broken')")
        assert browser.evaluate("document.getElementById('verdict').dataset.verdict") in ("OK", "NG")
        shown = browser.evaluate(
            "['before', 'suppression', 'after'].map(k => document.getElementById('map-' + k))"
            ".filter(img => img.complete && img.naturalWidth === 256).length"
        )
        assert shown == 3
        listed = browser.evaluate("document.querySelector('#normalities li[data-name=\"broken\"]').textContent")
        assert "broken (strength 1)" in listed and "broken bottle" in listed
        screenshot = browser.screenshot(ARTIFACTS / "service_page.png")
        print(f"screenshot: {screenshot}")

        browser.evaluate("document.querySelector('#normalities li[data-name=\"broken\"] button').click()")
        browser.wait_for("document.querySelector('#normalities li.none') !== null")
        browser.wait_for("document.getElementById('scores').textContent.includes('normalities: none')")

    with httpx.Client(base_url=live_server.url, headers={"X-API-Key": KEY}, timeout=30) as client:
        entries = client.get("/v1/lines/bottle/audit").json()["entries"]
        changes = [(e["action"], e["who"], e["why"]) for e in entries if e["action"].startswith("normality.")]
        assert changes[:2] == [
            ("normality.remove", "browser", ""),
            ("normality.add", "browser", "customer accepts broken bottles"),
        ]
