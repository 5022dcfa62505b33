"""Browser tests: the console in a real headless Chromium (Debian's `chromium`, installed by .ci/run),
driven by Playwright's Python package, which is pointed at it and never downloads a browser of its own.

Playwright's sync API runs in a worker thread (`in_browser`) while the real server and the device
simulator run on the test's trio loop. Screenshots of every page go to SCREENSHOTS, printed at the end.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
import trio

CHROMIUM = Path(os.environ.get("MDM_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console-screenshots"
WAIT_MS = 20_000  # the longest any page element is waited for

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run installs it) to run the browser tests",
                allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


def _browse(flow, *args):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # The appliance's TLS certificate comes from its own CA (tested elsewhere); the browser need not know it.
            context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            return flow(page, *args)
        finally:
            browser.close()


async def in_browser(flow, *args):
    """Run flow(page, *args) in a fresh Chromium on a worker thread; returns what flow returns."""
    return await trio.to_thread.run_sync(partial(_browse, flow, *args))


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page, base_url: str, name: str, password: str) -> None:
    page.goto(f"{base_url}/console/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for()


def pytest_terminal_summary(terminalreporter):
    if SCREENSHOTS.is_dir() and any(SCREENSHOTS.iterdir()):
        terminalreporter.write_line(f"console screenshots: {SCREENSHOTS}")
