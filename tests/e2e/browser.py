"""Playwright helpers for the dashboard tests: Debian's Chromium (never a downloaded browser),
screenshots kept in one folder whose path is printed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("ORCH_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(os.environ.get("ORCH_SCREENSHOT_DIR", "/tmp/orchestrator-screenshots"))


@contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium; the test is skipped (with the reason) when Playwright or Chromium is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def shot(page: Any, name: str, *, full: bool = True) -> Path:
    """Save a screenshot of the page into the screenshot folder."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full)
    print(f"screenshot: {path}")
    return path


def sign_in(page: Any, base: str, key: str) -> None:
    """Sign in through the form."""
    page.goto(f"{base}/admin/signin")
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/admin/batches")
