"""A real headless browser for the tests: Debian's Chromium driven by Playwright (its
Python package; the browser builds Playwright would download are not used). Console
errors and uncaught page errors are collected on every page; a test that provokes a
server error allows the browser's "Failed to load resource" line for that status only.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Screenshots of each page land here (build/ is not committed); look at them.
OUTPUT = Path(os.environ.get("MULLAMA_TEST_OUTPUT", ROOT / "build" / "test-output")) / "ui"
ARGS = [
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-background-networking",  # no connections out of this machine
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    # The Debian package's binary (its /usr/bin/chromium is a shell wrapper).
    for path in ("/usr/lib/chromium/chromium", shutil.which("chromium") or ""):
        if path and os.access(path, os.X_OK):
            return path
    raise RuntimeError("Chromium is missing: scripts/install-test-services.sh installs it")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One browser per test module: Playwright's sync API holds an event loop on this
    thread while it runs, so it must be gone before a later module calls asyncio.run."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=ARGS)
        yield b
        b.close()


class Console:
    """What a page wrote to its console at error level, and its uncaught errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: set[int] = set()

    def allow_status(self, *codes: int) -> None:
        self.allowed.update(codes)

    def unexpected(self) -> list[str]:
        out = []
        for text in self.errors:
            m = re.search(r"status of (\d{3})", text)
            if m and text.startswith("Failed to load resource") and int(m[1]) in self.allowed:
                continue
            out.append(text)
        return out


def open_page(browser, *, width: int = 1200, height: int = 820, dark: bool = False, **kw):
    context = browser.new_context(
        viewport={"width": width, "height": height},
        color_scheme="dark" if dark else "light",
        **kw,
    )
    page = context.new_page()
    console = Console()
    page.on("console", lambda m: console.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.errors.append(f"uncaught: {e}"))
    return page, console


def screenshot(page, name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
