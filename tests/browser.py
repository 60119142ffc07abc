"""Headless Chromium for the page tests, driven by Playwright for Python pointed at the system's browser.

Nothing is downloaded: Playwright's own browser builds are never installed (no ``playwright install``); the
browser is Debian's ``chromium`` package (``apt-get install chromium``), or the one named by
``$CFGDIFF_CHROMIUM``. Playwright gives every launch a fresh temporary profile (its own --user-data-dir).
Without Playwright or a browser the tests skip with the reason; under CI (``$CI`` set) they fail instead,
because CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str | None:
    """The Chromium executable: ``$CFGDIFF_CHROMIUM``, else the first of BROWSER_NAMES on the PATH."""
    explicit = os.environ.get("CFGDIFF_CHROMIUM")
    if explicit:
        return explicit if os.path.isfile(explicit) else None
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser tests (.ci/run installs chromium and playwright)")
    pytest.skip(reason)


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A launched headless Chromium (a Playwright ``Browser``), closed on exit; skips when there is none."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install playwright)")
    executable = chromium_path()
    if executable is None:
        _unavailable("no Chromium found (apt-get install chromium, or set CFGDIFF_CHROMIUM)")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
                                                 chromium_sandbox=False, timeout=60_000)
        except PlaywrightError as err:
            _unavailable(f"Chromium at {executable} did not start: {str(err).splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()


class PageProblems:
    """Console errors, uncaught exceptions and requests that leave the page's own origin, collected."""

    def __init__(self, page, allowed_prefixes: tuple[str, ...]) -> None:
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.allowed_prefixes = allowed_prefixes
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("request", self._request)

    def _request(self, request) -> None:
        if not request.url.startswith(self.allowed_prefixes):
            self.outside.append(request.url)
