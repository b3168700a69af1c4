"""Headless Chromium for the browser tests, driven by Playwright.

The system Chromium (Debian's /usr/bin/chromium, which .ci/run installs) is launched by path:
Playwright's own browser downloads are never used. Flags keep it from reaching the network by
itself (component updates, sync, first-run pings).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("CI is set but chromium is not installed (.ci/run installs it with apt-get)")
    pytest.skip("chromium is not installed (apt-get install chromium); CI requires it")


@contextmanager
def browser_page(width: int = 1280, height: int = 900) -> Iterator:
    """A Playwright page in a fresh headless Chromium."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()
