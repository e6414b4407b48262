"""A real headless Chromium for tests of the pay pages (Debian's ``chromium`` package).

``make test`` installs it (scripts/ensure_chromium.sh); Playwright drives it
through its own protocol client and never downloads a browser of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator

from playwright.async_api import Browser, async_playwright


def chromium_path() -> str:
    """The Chromium to drive: ``ARBRIDGE_CHROMIUM``, else ``chromium`` on PATH."""
    for candidate in (
        os.environ.get("ARBRIDGE_CHROMIUM", ""),
        shutil.which("chromium") or "",
        shutil.which("chromium-browser") or "",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "no Chromium found for the browser tests: run scripts/ensure_chromium.sh "
        "(installs Debian's chromium package) or set ARBRIDGE_CHROMIUM"
    )


@contextlib.asynccontextmanager
async def headless_chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            # Tests run as root in containers, where Chromium's own sandbox cannot start.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            await browser.close()
