"""The service as users run it: ``normadd serve`` under uvicorn on 127.0.0.1, and its web page and
``/docs`` in real headless Chromium driven by Playwright (Debian's ``chromium``; skipped outside CI
when it is missing, see ``tests/helpers/browser.py``), with every request off 127.0.0.1 refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from helpers import live_service
from helpers.browser import TIMEOUT_MS, keep_offline
from helpers.live_service import ServeProcess
from normadd.config import LineConfig
from normadd.registry.line_model import create_line
from normadd.registry.store import Registry

KEY = "live-test-secret"
STATION_KEY = "station-live-secret"  # scopes: inspect
ENGINEER_KEY = "engineer-live-secret"  # scopes: inspect, preview, change, audit
APPROVER_KEY = "approver-live-secret"  # scopes: approve, audit
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    folder = tmp_path_factory.mktemp("live")
    config = folder / "line.yaml"
    config.write_text("class_name: bottle\nbackbone: tiny-random\ndatabase: normadd.db\nservice:\n  line: bottle\n")
    with Registry(folder / "normadd.db") as registry:  # a second line whose changes need approval
        vials = LineConfig(class_name="vial", backbone="tiny-random", approval="required")
        create_line(registry, "vials", vials, "test set-up")
    env = {
        "NORMADD_API_KEYS": f"browser={KEY},station-1:inspect={STATION_KEY},"
        f"engineer:inspect+preview+change+audit={ENGINEER_KEY},approver:approve+audit={APPROVER_KEY}",
        "NORMADD_CACHE_DIR": str(folder / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    try:
        with live_service.running(config, folder / "server.log", env, timeout=60) as server:
            yield server
    except RuntimeError as error:  # it did not come up (its log is in the message)
        pytest.fail(str(error))


@pytest.fixture
def service_page(live_server: ServeProcess, page: Page) -> Iterator[Page]:
    """A Chromium page on the running service's web page, cut off from every other server."""
    outside = keep_offline(page, live_server.url)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{live_server.url}/")
    yield page
    assert outside == [], f"the page tried to reach other servers: {outside}"


def test_real_uvicorn_serves_health_auth_and_inspections(live_server: ServeProcess, bottle_dir: Path) -> None:
    image = (bottle_dir / "test" / "broken_large" / "000.png").read_bytes()
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        loaded = client.get("/healthz").json()["lines_loaded"]
        # the browser tests of this module may have loaded the approval line 'vials' first
        assert "bottle" in loaded and set(loaded) <= {"bottle", "vials"}
        assert client.get("/v1/lines").status_code == 401
        response = client.post(
            "/v1/lines/bottle/inspect", headers={"X-API-Key": KEY}, files=[("images", ("000.png", image, "image/png"))]
        )
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["filename"] == "000.png"
    assert KEY not in live_server.log.read_text(), "an API key was written to the log"


def test_the_web_page_adds_a_normality_and_shows_before_suppression_after(
    live_server: ServeProcess, service_page: Page, bottle_dir: Path
) -> None:
    page = service_page
    image = bottle_dir / "test" / "broken_large" / "000.png"
    with httpx.Client(base_url=live_server.url, headers={"X-API-Key": KEY}, timeout=30) as client:
        files = [("images", ("000.png", image.read_bytes(), "image/png"))]
        score = client.post("/v1/lines/bottle/inspect", files=files).json()["results"][0]["score_before"]
        threshold = client.put("/v1/lines/bottle/threshold", json={"value": score / 2, "why": "browser test"})
        assert threshold.status_code == 200, threshold.text
    page.fill("#api-key", KEY)
    page.click("#connect")
    page.wait_for_function("document.querySelector('#line option')?.value === 'bottle'")
    page.set_input_files("#image-file", image)
    expect(page.locator("#scores")).to_contain_text("000.png")
    # the OK/NG badge: the score is twice the threshold, so the part is NG
    page.wait_for_function("document.getElementById('verdict').dataset.verdict === 'NG'")
    badge = page.evaluate(
        "[document.getElementById('verdict').textContent, document.getElementById('verdict').className,"
        " !document.getElementById('verdict').hidden]"
    )
    assert badge == ["NG", "badge ng", True]
    expect(page.locator("#verdict-detail")).to_contain_text("threshold")

    page.fill("#normality-text", "broken")
    page.fill("#normality-why", "customer accepts broken bottles")
    page.click("#add-normality")
    listed = page.locator('#normalities li[data-name="broken"]')
    expect(listed).to_contain_text("broken (strength 1)")
    expect(listed).to_contain_text("broken bottle")
    expect(page.locator("#scores")).to_contain_text("normalities: broken")
    assert page.evaluate("document.getElementById('verdict').dataset.verdict") in ("OK", "NG")
    page.wait_for_function(
        "['before', 'suppression', 'after'].map(k => document.getElementById('map-' + k))"
        ".every(img => img.complete && img.naturalWidth === 256)"
    )
    screenshot = ARTIFACTS / "service_page.png"
    page.screenshot(path=screenshot, full_page=True)
    print(f"screenshot: {screenshot}")

    listed.locator("button").click()
    expect(page.locator("#normalities li.none")).to_be_visible()
    expect(page.locator("#scores")).to_contain_text("normalities: none")

    with httpx.Client(base_url=live_server.url, headers={"X-API-Key": KEY}, timeout=30) as client:
        entries = client.get("/v1/lines/bottle/audit").json()["entries"]
        changes = [(e["action"], e["who"], e["why"]) for e in entries if e["action"].startswith("normality.")]
        assert changes[:2] == [
            ("normality.remove", "browser", ""),
            ("normality.add", "browser", "customer accepts broken bottles"),
        ]


VISIBLE = "(id => { const e = document.getElementById(id); return !!(e && e.getClientRects().length); })"
PANELS = ("inspect-panel", "add-form", "approvals-panel")


def _connect(page: Page, key: str) -> None:
    page.evaluate(f"document.getElementById('api-key').value = {key!r}; document.getElementById('connect').click()")
    page.wait_for_function("document.getElementById('who').textContent.startsWith('signed in as')")


def _shown(page: Page) -> dict[str, bool]:
    return {panel: page.evaluate(f"{VISIBLE}('{panel}')") for panel in PANELS}


def _choose_vials(page: Page) -> None:
    # "signed in as" is shown before the line list arrives: wait until the first line's changes are shown
    page.wait_for_function(
        "document.querySelector('#line option[value=\"vials\"]') !== null && document.querySelector('#changes li')"
    )
    page.evaluate(
        "const select = document.getElementById('line'); select.value = 'vials';"
        "select.dispatchEvent(new Event('change'))"
    )


def test_a_station_key_sees_inspection_but_no_change_or_approval_controls(
    live_server: ServeProcess, service_page: Page
) -> None:
    page = service_page
    _connect(page, STATION_KEY)
    assert page.evaluate("document.getElementById('who').textContent") == "signed in as station-1 (inspect)"
    assert _shown(page) == {"inspect-panel": True, "add-form": False, "approvals-panel": False}
    assert page.evaluate("[...document.querySelectorAll('#normalities button')].every(b => b.hidden)")
    assert STATION_KEY not in live_server.log.read_text()


def test_a_quality_engineer_proposes_a_change_but_sees_no_approve_button(
    live_server: ServeProcess, service_page: Page
) -> None:
    page = service_page
    _connect(page, ENGINEER_KEY)
    assert _shown(page) == {"inspect-panel": True, "add-form": True, "approvals-panel": True}
    _choose_vials(page)
    page.wait_for_function("document.querySelector('#changes li.none') !== null")
    page.evaluate(
        "document.getElementById('normality-text').value = 'crack';"
        "document.getElementById('normality-why').value = 'CAPA-7';"
        "document.getElementById('add-normality').click()"
    )
    page.wait_for_function("document.getElementById('status').textContent.startsWith('proposed change #')")
    page.wait_for_function("document.querySelector('#changes li[data-id]') !== null")
    item = "document.querySelector('#changes li[data-id]')"
    assert "proposed by engineer (CAPA-7)" in page.evaluate(f"{item}.textContent")
    assert page.evaluate(f"[...{item}.querySelectorAll('button')].every(b => !b.getClientRects().length)")
    assert page.evaluate("document.querySelector('#normalities li.none') !== null")  # not applied
    screenshot = ARTIFACTS / "service_page_engineer.png"
    page.screenshot(path=screenshot, full_page=True)
    print(f"screenshot: {screenshot}")
    assert ENGINEER_KEY not in live_server.log.read_text()


def test_an_approver_approves_a_pending_change_from_the_page(live_server: ServeProcess, service_page: Page) -> None:
    page = service_page
    with httpx.Client(base_url=live_server.url, headers={"X-API-Key": ENGINEER_KEY}, timeout=60) as client:
        change = client.post("/v1/lines/vials/normalities", json={"text": "bubble", "why": "CAPA-9"}).json()
    _connect(page, APPROVER_KEY)
    assert _shown(page) == {"inspect-panel": False, "add-form": False, "approvals-panel": True}
    _choose_vials(page)
    item = f"document.querySelector('#changes li[data-id=\"{change['id']}\"]')"
    page.wait_for_function(f"{item} !== null")
    page.evaluate(f"{item}.querySelector('button.approve').click()")
    approved = f"change #{change['id']} approved by approver"
    page.wait_for_function(f"document.getElementById('status').textContent === {approved!r}")
    page.wait_for_function("document.querySelector('#normalities li[data-name=\"bubble\"]') !== null")
    assert APPROVER_KEY not in live_server.log.read_text()


def test_docs_render_in_the_browser_with_no_internet(live_server: ServeProcess, page: Page) -> None:
    outside = keep_offline(page, live_server.url)
    page.goto(f"{live_server.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("normadd")
    operations = page.locator(".swagger-ui .opblock-summary-path")
    expect(operations.first).to_be_visible()
    assert "/v1/lines/{line}/inspect" in operations.all_inner_texts()
    expect(page.locator(".swagger-ui")).not_to_contain_text("Unable to render this definition")
    assert outside == [], f"/docs tried to reach other servers: {outside}"
