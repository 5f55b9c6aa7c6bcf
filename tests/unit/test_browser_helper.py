"""The browser tests' launcher: Debian's chromium, a skip without it locally, a failure in CI."""

from __future__ import annotations

import pytest

from helpers import browser


def test_missing_chromium_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser, "CANDIDATES", ("/nonexistent/chromium",))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is missing in CI"):
        browser.launch_args({})
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        browser.launch_args({})


def test_the_system_chromium_is_launched_without_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser, "CANDIDATES", ("/bin/sh",))  # any executable stands in for it here
    options = browser.launch_args({"headless": True})
    assert options == {"headless": True, "executable_path": "/bin/sh", "args": ["--no-sandbox", "--disable-gpu"]}
