"""The documentation site as readers use it: the tutorials' commands run, the site builds strictly, and
its pages render in headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright).

The tutorial commands come from ``docsgen/tutorials.yaml``, the file the pages are rendered from, so a
tutorial cannot rot. Their run is recorded under ``build/docs-tutorials/``: the strict build below (and
``make docs`` afterwards) shows that very run instead of running the commands a second time.
"""

from __future__ import annotations

import functools
import html
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # docsgen sits at the repository root, beside src/
    sys.path.insert(0, str(REPO_ROOT))

from docsgen import tutorials  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
TUTORIALS = tutorials.load_tutorials()


def page_text(path: Path) -> str:
    """A built page's text without its HTML tags (code is split into highlighted spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text()))


@pytest.fixture(scope="module")
def tutorial_runs(bottle_dir: Path) -> dict[str, list[tutorials.StepRun]]:
    return tutorials.record_all()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_every_tutorial_step_runs_and_prints_what_the_page_expects(
    name: str, tutorial_runs: dict[str, list[tutorials.StepRun]]
) -> None:
    runs = tutorial_runs[name]
    for run in runs:
        assert run.returncode == 0, f"{name}/{run.id} exited {run.returncode}:\n{run.output[-3000:]}"
        assert not run.missing_text, f"{name}/{run.id} did not print {run.missing_text}:\n{run.output[-3000:]}"
        assert not run.missing_files, f"{name}/{run.id} did not write {run.missing_files}"
    assert [run.id for run in runs] == [step.id for step in TUTORIALS[name]]


@pytest.fixture(scope="module")
def built_site(
    tutorial_runs: dict[str, list[tutorials.StepRun]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    site = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    env.pop("NORMADD_DOCS_STALE_RUNS", None)
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    return site, done


@pytest.mark.slow
def test_site_builds_with_strict_checks_from_the_recorded_tutorial_run(
    built_site: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    site, done = built_site
    assert done.returncode == 0, done.stderr[-5000:]
    assert "running the tutorials" not in done.stderr  # it showed the run the tests just recorded
    tutorial = page_text(site / "tutorials" / "first-normality" / "index.html")
    assert "$ normadd inspect ../shared/data/mvtec_ad/bottle/test/broken_large/000.png" in tutorial
    assert "wrote maps, scores.csv and run.json (input -> output names) to normadd-out/first" in tutorial
    assert (site / "tutorials" / "generated" / "first-normality" / "000_after.png").is_file()
    cli = page_text(site / "reference" / "cli" / "index.html")
    assert "normadd normality add" in cli and "--strength" in cli
    assert "POST /v1/lines/{line}/inspect" in page_text(site / "reference" / "rest-api" / "index.html")
    assert "bench_inspect" in page_text(site / "explanation" / "measurements" / "index.html")


@pytest.fixture(scope="module")
def site_url(built_site: tuple[Path, subprocess.CompletedProcess[str]]) -> Iterator[str]:
    site, done = built_site
    if done.returncode != 0:
        pytest.fail("the site did not build (see the strict build test)")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_home_tutorial_and_api_reference_render_in_chromium(site_url: str) -> None:
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    outside: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on(
            "request",
            lambda request: (
                None
                if request.url.startswith(site_url) or request.url.startswith("data:")
                else outside.append(request.url)
            ),
        )
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        page.goto(f"{site_url}/", wait_until="networkidle")
        assert page.locator("article h1").inner_text().strip().removesuffix("¶").strip() == "normadd"
        assert page.get_by_role("link", name="Add your first normality and read the maps").first.is_visible()
        page.screenshot(path=str(ARTIFACTS / "docs_home.png"))

        page.goto(f"{site_url}/tutorials/first-normality/", wait_until="networkidle")
        assert "wrote maps, scores.csv and run.json" in page.locator("article").inner_text()
        pictures = page.locator("article .grid-figures img")
        assert pictures.count() == 6
        for index in range(pictures.count()):
            pictures.nth(index).scroll_into_view_if_needed()
            loaded = pictures.nth(index).evaluate("img => img.complete && img.naturalWidth > 0")
            assert loaded, f"picture {index} of the tutorial did not load"
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / "docs_tutorial.png"), full_page=True)

        page.goto(f"{site_url}/reference/python-api/", wait_until="networkidle")
        article = page.locator("article").inner_text()
        assert "normadd.config.LineConfig" in article and "build_addition" in article
        page.screenshot(path=str(ARTIFACTS / "docs_api.png"))

        page.goto(f"{site_url}/explanation/method/", wait_until="networkidle")
        equations = page.locator("article p.equation img")
        assert equations.count() >= 3
        assert equations.first.evaluate("img => img.complete && img.naturalWidth > 0")
        page.screenshot(path=str(ARTIFACTS / "docs_method.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert not outside, f"the site loaded files from elsewhere (it must work offline): {outside[:5]}"
