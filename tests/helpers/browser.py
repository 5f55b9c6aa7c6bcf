"""Browser tests with Playwright on Debian's ``chromium`` (no browser download at test time).

pytest-playwright's fixtures (``page``, ``context``, ``browser``) launch the system Chromium via
``executable_path``; :func:`launch_args` is what ``tests/conftest.py`` hands them. Without
Chromium the browser tests skip, except in CI (``CI`` set), where they fail: ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route, expect

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
TIMEOUT_MS = 30_000  # a forward pass on a busy 2-core CI machine can take seconds


def find_chromium() -> str | None:
    """The system Chromium, or None."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The system Chromium; skips the test without it, or fails it in CI."""
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); CI always runs this test")
    return binary


def launch_args(defaults: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch options with the system Chromium (``--no-sandbox``: CI runs as root).

    Also gives ``expect`` assertions :data:`TIMEOUT_MS` (Playwright's default is 5 s).
    """
    expect.set_options(timeout=TIMEOUT_MS)
    return {**defaults, "executable_path": require_chromium(), "args": ["--no-sandbox", "--disable-gpu"]}


def keep_offline(page: Page, origin: str) -> list[str]:
    """Abort every request the page makes outside ``origin`` (and data:/blob: URLs); returns them as they come.

    The machine of a plant may have no internet: a page that needs an outside server must fail
    here as it would there, and the returned list names what it tried to fetch.
    """
    allowed = urlsplit(origin)
    attempted: list[str] = []

    def handle(route: Route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob") or (parts.scheme, parts.netloc) == (allowed.scheme, allowed.netloc):
            route.continue_()
        else:
            attempted.append(url)
            route.abort("internetdisconnected")

    page.route("**/*", handle)
    return attempted
