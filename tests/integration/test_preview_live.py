"""The Preview button in real headless Chromium (Playwright, Debian's ``chromium``) against ``normadd
serve`` under uvicorn: the flip table shows each part that would pass, with its thumbnail and
suppression map, and nothing changes; then a normality is staged and activated from the page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from helpers import live_service
from helpers.browser import TIMEOUT_MS, keep_offline
from normadd.registry.store import Registry, ThresholdRecord

KEY = "preview-live-secret"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("preview-live")
    config = folder / "line.yaml"
    config.write_text(
        "class_name: bottle\nbackbone: tiny-random\nretain:\n  images: 20\n"
        "database: normadd.db\nservice:\n  line: bottle\n"
    )
    env = {
        "NORMADD_API_KEYS": f"browser={KEY}",
        "NORMADD_CACHE_DIR": str(folder / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    try:
        with live_service.running(config, folder / "server.log", env, timeout=60) as running:
            yield running.url, folder / "normadd.db"
    except RuntimeError as error:  # it did not come up (its log is in the message)
        pytest.fail(str(error))


@pytest.fixture
def service_page(server: tuple[str, Path], page: Page) -> Iterator[Page]:
    """A Chromium page on the running service's web page, cut off from every other server."""
    outside = keep_offline(page, server[0])
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{server[0]}/")
    yield page
    assert outside == [], f"the page tried to reach other servers: {outside}"


def test_the_preview_button_shows_the_flip_table_and_changes_nothing(
    server: tuple[str, Path], service_page: Page, bottle_dir: Path
) -> None:
    url, database = server
    paths = [bottle_dir / "test" / group / "000.png" for group in ("broken_large", "broken_small", "contamination")]
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=60) as client:
        files = [("images", (f"{p.parent.name}.png", p.read_bytes(), "image/png")) for p in paths]
        inspected = client.post("/v1/lines/bottle/inspect", files=files)
        assert inspected.status_code == 200, inspected.text
        scores = [item["score_after"] for item in inspected.json()["results"]]
    with Registry(database) as registry:  # every part NG now: the candidate's suppression decides the flips
        registry.set_threshold("bottle", ThresholdRecord(min(scores) * 0.99, None, "set"), "qa", "test")

    page = service_page
    page.fill("#api-key", KEY)
    page.click("#connect")
    page.wait_for_function("document.querySelector('#line option')?.value === 'bottle'")
    page.fill("#normality-text", "broken")
    page.fill("#preview-recent", "10")
    page.click("#preview-normality")
    flips = page.locator("#preview-table tbody tr.flip")
    expect(flips.first).to_be_visible(timeout=60_000)
    summary = page.locator("#preview-summary").text_content() or ""
    assert "'broken' on 3 part(s)" in summary and "Nothing was changed" in summary, summary
    rows = flips.count()
    page.wait_for_function(
        "[...document.querySelectorAll('#preview-table tbody img')]"
        ".every(img => img.complete && img.naturalWidth === 256)"
    )
    assert page.locator("#preview-table tbody img").count() == 2 * rows
    expect(page.locator("#preview-table tbody td.verdict").first).to_contain_text("NG → OK")
    screenshot = ARTIFACTS / "preview_page.png"
    page.screenshot(path=screenshot, full_page=True)
    print(f"screenshot: {screenshot}")

    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=30) as client:
        assert client.get("/v1/lines/bottle/normalities").json()["normalities"] == []
        entry = client.get("/v1/lines/bottle/audit", params={"limit": 1}).json()["entries"][0]
        assert (entry["action"], entry["who"], entry["details"]["flips"]) == ("normality.preview", "browser", rows)

    # staged from the page: listed with an Activate button, applies only once activated
    page.check("#normality-staged")
    page.fill("#normality-text", "broken")
    page.fill("#normality-why", "staged from the browser")
    page.click("#add-normality")
    staged = page.locator('#normalities li[data-name="broken"]')
    expect(staged).to_have_attribute("data-state", "staged")
    expect(staged.locator(".state")).to_have_text("staged")
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=30) as client:
        listed = client.get("/v1/lines/bottle/normalities").json()["normalities"]
        assert [(n["name"], n["state"]) for n in listed] == [("broken", "staged")]
    staged.locator("button.activate").click()
    expect(staged).to_have_attribute("data-state", "active")
    expect(staged.locator("button.activate")).to_have_count(0)
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=30) as client:
        listed = client.get("/v1/lines/bottle/normalities").json()["normalities"]
        assert [(n["name"], n["state"]) for n in listed] == [("broken", "active")]
        entries = client.get("/v1/lines/bottle/audit", params={"limit": 2}).json()["entries"]
        assert [(e["action"], e["who"]) for e in entries] == [
            ("normality.activate", "browser"),
            ("normality.add", "browser"),
        ]
