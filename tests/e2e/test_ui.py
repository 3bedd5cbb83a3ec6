"""The web UI in a real browser (Debian's Chromium, headless, driven by Playwright): the
chat playground streams, stops, shows errors and renders Markdown safely; the dashboard
follows the daemon live and its operator actions work; with keys on, the page asks for
one. Every page is checked for console errors and saved as a screenshot
(build/test-output/ui/)."""

from __future__ import annotations

import threading
from importlib import resources

import httpx
import pytest

from tests.browser import open_page, screenshot
from tests.conftest import MODEL, Daemon, wait_for

KEY = "sk-ui-test-admin-0123456789"
INFER = "sk-ui-test-inference-0123456789"
XSS = '**bold** and `code` <script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


@pytest.fixture(scope="module")
def served():
    d = Daemon("--parallel", "2", "--context-size", "2048").wait_healthy()
    yield d
    d.stop()


@pytest.fixture
def chat(browser, served):
    page, console = open_page(browser, permissions=["clipboard-read", "clipboard-write"])
    page.goto(served.url + "/ui/")
    page.wait_for_selector(f'#model option[value="{MODEL}"]', state="attached")
    yield page, console
    assert console.unexpected() == []
    page.context.close()


def _active(d: Daemon) -> int:
    return d.model_status()["active_sequences"]


def _set(page, selector: str, value: str) -> None:
    page.fill(selector, value)


def test_pages_are_small_static_and_strictly_headed(served):
    d = served
    browser_root = httpx.get(d.url + "/", headers={"Accept": "text/html,*/*"}, timeout=10)
    assert browser_root.status_code == 307 and browser_root.headers["location"] == "/ui/"
    api_root = httpx.get(d.url + "/", timeout=10)
    assert api_root.status_code == 200 and api_root.text == "Mullama is running"
    assert httpx.get(d.url + "/ui", timeout=10).headers["location"] == "/ui/"
    total = 0
    for name in ("", "dashboard", "chat.js", "common.js", "markdown.js", "dashboard.js",
                 "style.css", "icon.svg"):  # fmt: skip
        r = httpx.get(f"{d.url}/ui/{name}", timeout=10)
        assert r.status_code == 200, name
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        total += len(r.content)
    # Both pages with every asset they load, as served: under 100 KB.
    assert total < 100_000
    files = [f.name for f in resources.files("mullama.ui").iterdir() if f.name != "__init__.py"]
    assert not [f for f in files if f.endswith((".html", ".js", ".css")) and f not in (
        "index.html", "dashboard.html", "chat.js", "common.js", "markdown.js",
        "dashboard.js", "style.css")]  # fmt: skip
    for bad in ("__init__.py", "..%2Fconfig.py", "nope.js", "%2Fetc%2Fpasswd"):
        assert httpx.get(f"{d.url}/ui/{bad}", timeout=10).status_code == 404, bad


def test_chat_streams_keeps_and_regenerates(chat, served):
    page, _ = chat
    # Every text length the reply shows, as the page draws it.
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const n = document.querySelector('.message.assistant:last-of-type .content');
            const l = n ? n.textContent.length : 0;
            if (l && window.lengths[window.lengths.length - 1] !== l) window.lengths.push(l);
        }).observe(document.getElementById('messages'),
                   {subtree: true, childList: true, characterData: true});
    }""")
    _set(page, "#temperature", "0")
    _set(page, "#max-tokens", "48")
    page.click("#prompt")
    page.keyboard.type("Count from 1 to 30.")
    page.keyboard.press("Shift+Enter")  # a new line, not a send
    assert page.input_value("#prompt") == "Count from 1 to 30.\n"
    assert page.locator(".message").count() == 0
    page.keyboard.type("Use digits.")
    page.keyboard.press("Enter")
    figures = page.wait_for_selector(".message.assistant .figures", timeout=60_000)
    text = figures.inner_text()
    assert "tokens" in text and "TTFT" in text and "tok/s" in text, text
    lengths = page.evaluate("window.lengths")
    assert len(lengths) >= 3 and lengths == sorted(lengths), lengths  # it grew, in steps
    reply = page.inner_text(".message.assistant .content")
    assert reply.strip()
    screenshot(page, "chat")
    # Copy puts the reply's text on the clipboard.
    page.click(".message.assistant button.copy")
    assert page.evaluate("navigator.clipboard.readText()").strip() == reply.strip()
    # Kept in the browser: a reload shows the conversation and its reply.
    page.reload()
    page.wait_for_selector(".message.assistant .content")
    assert page.inner_text(".message.assistant .content") == reply
    assert "Count from 1 to 30." in page.inner_text("#conversations")
    # Regenerate replaces the last reply (temperature 0: the same text again).
    page.click(".message.assistant button.regenerate")
    page.wait_for_selector(".message.assistant .figures", timeout=60_000)
    assert page.locator(".message.assistant").count() == 1
    # A second conversation, then back to the first.
    page.click("#new-chat")
    assert page.locator(".message").count() == 0
    assert page.locator("#conversations li").count() == 2
    page.locator("#conversations .conv-title", has_text="Count from 1").click()
    assert page.locator(".message").count() == 2


@pytest.mark.parametrize("how", ["button", "escape"])
def test_stop_aborts_and_the_server_frees_the_sequence(chat, served, how):
    page, _ = chat
    _set(page, "#temperature", "0")
    _set(page, "#max-tokens", "1500")
    page.fill("#prompt", "Write a very long story about a dragon and a knight.")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => (document.querySelector('.message.assistant .content')?.textContent || '').length > 20",
        timeout=60_000,
    )
    wait_for(lambda: _active(served) == 1, timeout=30)
    if how == "button":
        page.click("#stop")
    else:
        page.keyboard.press("Escape")
    wait_for(lambda: _active(served) == 0, timeout=30)  # the server freed the slot
    figures = page.wait_for_selector(".message.assistant .figures")
    assert "stopped" in figures.inner_text()
    assert page.is_enabled("#send") and not page.is_enabled("#stop")


def test_server_errors_are_readable(chat, served):
    page, console = chat
    console.allow_status(400, 404)
    page.evaluate("""() => {
        const s = document.getElementById('model');
        s.append(new Option('no-such-model', 'no-such-model'));
        s.value = 'no-such-model';
    }""")
    page.fill("#prompt", "hello")
    page.keyboard.press("Enter")
    error = page.wait_for_selector("#error:not([hidden])")
    assert "Not found" in error.inner_text() and "no-such-model" in error.inner_text()
    # A bad schema from the advanced panel: the server's 400 message, as text.
    page.select_option("#model", MODEL)
    page.click("#advanced summary")
    page.fill("#schema", '{"type": "nonsense"}')
    page.fill("#prompt", "hello")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => !document.getElementById('error').hidden && "
        "document.getElementById('error').textContent.includes('cannot be compiled')"
    )
    page.fill("#schema", "{not json")
    page.fill("#prompt", "hello")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.getElementById('error').textContent.includes('not valid JSON')"
    )


def test_html_in_model_output_is_shown_as_text(chat, served):
    """The reply is forced (a JSON-schema enum) to carry a script tag and an image with an
    onerror handler next to Markdown: the Markdown renders, the HTML is text."""
    page, _ = chat
    _set(page, "#temperature", "0")
    page.click("#advanced summary")
    import json

    page.fill("#schema", json.dumps({"type": "string", "enum": [XSS]}))
    page.fill("#prompt", "Say it.")
    page.keyboard.press("Enter")
    page.wait_for_selector(".message.assistant .figures", timeout=60_000)
    content = page.locator(".message.assistant .content")
    assert "<script>window.__pwned=1</script>" in content.inner_text()
    assert content.locator("strong").inner_text() == "bold"
    assert content.locator("code").inner_text() == "code"
    assert content.locator("script, img").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_dashboard_follows_a_generation_and_operates_models(browser, served):
    d = served
    page, console = open_page(browser)
    page.goto(d.url + "/ui/dashboard")
    page.wait_for_selector(f'#models tr[data-model="{MODEL}"] td[data-state="loaded"]')
    assert page.inner_text("#daemon-status") == "ready"
    slots = f'.slots[data-model="{MODEL}"] tbody tr'
    page.wait_for_selector(slots)
    assert page.locator(slots).count() == 2
    assert page.locator(f'{slots}[data-state="decoding"]').count() == 0

    done = threading.Event()

    def generate() -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}],
                "max_tokens": 400, "temperature": 0, "stream": True}  # fmt: skip
        try:
            with httpx.stream("POST", d.url + "/v1/chat/completions", json=body, timeout=120) as r:
                for _ in r.iter_lines():
                    pass
        finally:
            done.set()

    worker = threading.Thread(target=generate)
    worker.start()
    page.wait_for_selector(f'{slots}[data-state="decoding"]', timeout=30_000)
    assert page.inner_text("#active-requests") == "1"
    screenshot(page, "dashboard")
    worker.join(120)
    assert done.is_set()
    page.wait_for_function(
        f"() => document.querySelectorAll('{slots}[data-state=\"decoding\"]').length === 0"
    )
    # Operator actions (a local caller needs no key without keys configured).
    row = f'#models tr[data-model="{MODEL}"]'
    page.click(f'{row} button[data-action="unpin"]')
    page.wait_for_function(
        f"() => document.querySelector('{row} td:nth-child(3)').textContent === 'no'"
    )
    page.click(f'{row} button[data-action="unload"]')
    page.wait_for_selector(f'{row} td[data-state="unloaded"]')
    assert not d.model_status()["loaded"]
    page.click(f'{row} button[data-action="load"]')
    page.wait_for_selector(f'{row} td[data-state="loaded"]', timeout=60_000)
    page.click(f'{row} button[data-action="pin"]')
    page.wait_for_function(
        f"() => document.querySelector('{row} td:nth-child(4)').textContent === 'forever'"
    )
    assert console.unexpected() == []
    page.context.close()


def test_narrow_dark_and_labelled(browser, served):
    for name, path in (("chat", "/ui/"), ("dashboard", "/ui/dashboard")):
        page, console = open_page(browser, width=390, height=844, dark=True)
        page.goto(served.url + path)
        page.wait_for_function("() => document.querySelector('main').children.length > 0")
        if name == "dashboard":
            page.wait_for_selector("#models tbody tr")
        # Nothing wider than a phone's screen: no sideways scrolling of the page.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert bg == "rgb(21, 23, 28)", bg  # the dark palette
        unlabelled = page.evaluate("""() => [...document.querySelectorAll(
                'input, select, textarea, button')].filter((e) => !(
                (e.labels && e.labels.length) || e.getAttribute('aria-label') ||
                e.textContent.trim())).map((e) => e.outerHTML)""")
        assert unlabelled == []
        screenshot(page, f"{name}-narrow-dark")
        assert console.unexpected() == []
        page.context.close()


def test_with_keys_the_page_asks_for_one(browser, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - {{name: ops, key: {KEY}, scope: admin}}\n"
                    f"  - {{name: app, key: {INFER}, scope: inference}}\n")  # fmt: skip
    with Daemon("--parallel", "1", "--context-size", "512",
                "--api-key-file", str(keys)).wait_healthy() as d:  # fmt: skip
        page, console = open_page(browser)
        console.allow_status(401, 403)
        page.goto(d.url + "/ui/")
        dialog = page.wait_for_selector("#key-dialog[open]")
        screenshot(page, "key-dialog")
        page.fill("#key-input", "sk-wrong")
        page.keyboard.press("Enter")
        # Refused: asked again, with the server's reason.
        page.wait_for_function(
            "() => document.getElementById('key-dialog').open && "
            "document.getElementById('key-reason').textContent.includes('API key')"
        )
        page.fill("#key-input", INFER)
        page.keyboard.press("Enter")
        page.wait_for_selector(f'#model option[value="{MODEL}"]', state="attached")
        assert not dialog.is_visible()
        _set(page, "#max-tokens", "8")
        page.fill("#prompt", "hi")
        page.keyboard.press("Enter")
        page.wait_for_selector(".message.assistant .figures", timeout=60_000)
        assert "error" not in page.inner_text(".message.assistant .figures")
        # Kept for this tab only.
        assert page.evaluate("sessionStorage.getItem('mullama.api-key')") == INFER
        assert INFER not in page.evaluate("JSON.stringify(localStorage)")
        # The dashboard in the same tab uses it; its operator actions need an admin key.
        page.goto(d.url + "/ui/dashboard")
        row = f'#models tr[data-model="{MODEL}"]'
        page.wait_for_selector(f'{row} td[data-state="loaded"]')
        assert not page.is_visible("#key-dialog")
        page.click(f'{row} button[data-action="unload"]')
        error = page.wait_for_selector("#error:not([hidden])")
        assert "Not allowed with this API key" in error.inner_text()
        assert _loaded(d, KEY)
        page.click("#forget-key")  # another key
        page.fill("#key-input", KEY)
        page.keyboard.press("Enter")
        page.click(f'{row} button[data-action="unload"]')
        page.wait_for_selector(f'{row} td[data-state="unloaded"]')
        assert not _loaded(d, KEY)
        assert console.unexpected() == []
        page.context.close()


def _loaded(d: Daemon, key: str) -> bool:
    auth = {"Authorization": f"Bearer {key}"}
    status = httpx.get(d.url + "/api/system/status", headers=auth, timeout=10).json()
    return next(m for m in status["models_loaded"] if m["name"] == MODEL)["loaded"]


def test_a_late_refusal_of_a_replaced_key_does_not_forget_the_new_one(browser, tmp_path):
    """Requests sent with a wrong key can come back refused after the right key was typed
    in: that refusal is not the new key's. The page sends such a request again with the
    new key, keeps the key, and asks for nothing."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - {{name: app, key: {INFER}, scope: inference}}\n")
    with Daemon("--parallel", "1", "--context-size", "512",
                "--api-key-file", str(keys)).wait_healthy() as d:  # fmt: skip
        page, console = open_page(browser)
        console.allow_status(401)
        held = []

        def hold_one_wrong(route):
            if route.request.headers.get("authorization") == "Bearer sk-wrong" and not held:
                held.append(route)  # answered later, after the right key is in
            else:
                route.continue_()

        page.route("**/api/ps", hold_one_wrong)
        page.goto(d.url + "/ui/")
        dialog = page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", "sk-wrong")
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.getElementById('key-dialog').open")
        wait_for(lambda: page.evaluate("1") and held)  # evaluate lets the route handler run
        page.fill("#key-input", INFER)
        page.keyboard.press("Enter")
        page.wait_for_selector(f'#model option[value="{MODEL}"]', state="attached")

        def resent(response):
            sent = response.request.headers.get("authorization")
            return "/api/ps" in response.url and sent == f"Bearer {INFER}"

        with page.expect_response(resent):
            held[0].continue_()  # its 401 comes back now
        assert page.evaluate("() => sessionStorage.getItem('mullama.api-key')") == INFER
        assert not dialog.is_visible() and page.is_hidden("#error")
        assert console.unexpected() == []
        page.context.close()
