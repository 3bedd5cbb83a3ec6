"""Take the README's screenshots of the web UI (docs/ui-chat.png, docs/ui-dashboard.png):
a daemon on a free port, a chat reply with Markdown, and the dashboard during a
generation, in Debian's Chromium (headless, through Playwright).

    .venv/bin/python scripts/ui_screenshots.py
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.browser import ARGS, chromium_path  # noqa: E402
from tests.conftest import MODEL, Daemon  # noqa: E402

PROMPT = "Show a short Python function that adds two numbers, then list three uses of it."


def main() -> int:
    from playwright.sync_api import sync_playwright

    with Daemon("--parallel", "2", "--context-size", "2048").wait_healthy() as d:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.goto(d.url + "/ui/")
            page.wait_for_selector(f'#model option[value="{MODEL}"]', state="attached")
            page.fill("#temperature", "0")
            page.fill("#system", "You are a helpful assistant. Answer in Markdown.")
            page.fill("#prompt", PROMPT)
            page.keyboard.press("Enter")
            page.wait_for_selector(".message.assistant .figures", timeout=120_000)
            page.screenshot(path=str(ROOT / "docs" / "ui-chat.png"))

            body = {"model": MODEL, "max_tokens": 600, "temperature": 0, "stream": True,
                    "messages": [{"role": "user", "content": "Write a long story."}]}  # fmt: skip

            def generate() -> None:
                with httpx.stream("POST", d.url + "/v1/chat/completions", json=body,
                                  timeout=120) as r:  # fmt: skip
                    for _ in r.iter_lines():
                        pass

            runs = [threading.Thread(target=generate) for _ in range(2)]
            for t in runs:
                t.start()
            page.goto(d.url + "/ui/dashboard")
            page.wait_for_selector('.slots tr[data-state="decoding"]', timeout=60_000)
            page.wait_for_timeout(4000)  # a few polls, so the charts have a shape
            page.screenshot(path=str(ROOT / "docs" / "ui-dashboard.png"), full_page=True)
            for t in runs:
                t.join()
            browser.close()
    print("docs/ui-chat.png, docs/ui-dashboard.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
