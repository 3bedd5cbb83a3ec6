"""A web page on another origin cannot use the daemon through the user's browser: requests
whose Origin is neither the daemon's own nor in --cors-origins get 403 (in the API's
shape) before anything runs, and request bodies must be JSON (415 otherwise)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MODEL, Daemon

EVIL = "http://evil.example"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def guarded():
    d = Daemon("--parallel", "1", "--context-size", "512",
               "--cors-origins", "http://app.example").wait_healthy()  # fmt: skip
    yield d
    d.stop()


def _post(d: Daemon, path: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(d.url + path, content=body, headers=headers, timeout=60)


def test_simple_cross_site_requests_change_nothing(guarded):
    """What a page can send without a CORS preflight: text/plain POSTs."""
    d = guarded
    before = httpx.get(d.url + "/api/tags", timeout=10).json()
    plain = {"Origin": EVIL, "Content-Type": "text/plain"}
    copy = _post(d, "/api/copy", b'{"source": "smollm2:135m", "destination": "stolen"}', **plain)
    assert copy.status_code == 403 and "cross-origin request" in copy.json()["error"]
    stop = _post(d, "/api/daemon/stop", b"", **plain)
    assert stop.status_code == 403
    chat = _post(d, "/v1/chat/completions", httpx.Request("POST", "/", json=CHAT).content, **plain)
    assert chat.status_code == 403 and chat.json()["error"]["type"] == "permission_error"
    msgs = _post(d, "/v1/messages", b"{}", Origin="null", **{"Content-Type": "application/json"})
    assert msgs.status_code == 403 and msgs.json()["type"] == "error"  # Anthropic's shape
    assert httpx.get(d.url + "/api/tags", timeout=10).json() == before
    assert d.proc.poll() is None and httpx.get(d.url + "/health", timeout=10).status_code == 200


def test_the_daemons_own_pages_and_listed_origins_are_served(guarded):
    d = guarded
    json_type = {"Content-Type": "application/json"}
    body = httpx.Request("POST", "/", json=CHAT).content
    own = _post(d, "/v1/chat/completions", body, Origin=d.url, **json_type)
    assert own.status_code == 200, own.text
    listed = _post(d, "/v1/chat/completions", body, Origin="http://app.example", **json_type)
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == "http://app.example"
    # Behind a proxy that rewrites Host: the origin the browser saw is X-Forwarded-Host.
    proxied = _post(d, "/v1/chat/completions", body, Origin="https://chat.example.org",
                    **json_type, **{"X-Forwarded-Host": "chat.example.org"})  # fmt: skip
    assert proxied.status_code == 200
    preflight = httpx.options(d.url + "/v1/chat/completions", timeout=10, headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})  # fmt: skip
    assert preflight.status_code == 200
    assert _post(d, "/api/version", b"", Origin=EVIL).status_code == 403


def test_request_bodies_must_be_json(guarded):
    d = guarded
    body = httpx.Request("POST", "/", json=CHAT).content
    for kind in ("text/plain", "multipart/form-data; boundary=x"):
        r = _post(d, "/v1/chat/completions", body, **{"Content-Type": kind})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = _post(d, "/api/generate", b'{"model": "smollm2:135m"}', **{"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    # curl -d '{...}' (form encoding, no Origin) works as it does with Ollama.
    curl = _post(d, "/api/generate", b'{"model": "smollm2:135m", "prompt": "hi", "stream": '
                 b'false, "options": {"num_predict": 2}}',
                 **{"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert curl.status_code == 200 and curl.json()["done"]
    # ... but not from a browser page (it would have sent its Origin).
    form = _post(d, "/api/generate", b"{}", Origin=d.url,
                 **{"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert form.status_code == 415


EVIL_PAGE = """<!doctype html><title>evil</title><script>
(async () => {
  const target = %(target)r;
  const results = {};
  const simple = (path, body) => fetch(target + path, {method: "POST", mode: "no-cors",
      headers: {"Content-Type": "text/plain"}, body}).then(() => "sent", (e) => String(e));
  results.copy = await simple("/api/copy",
      JSON.stringify({source: "smollm2:135m", destination: "stolen"}));
  results.stop = await simple("/api/daemon/stop", "");
  results.chat = await simple("/v1/chat/completions", JSON.stringify(
      {model: "smollm2:135m", messages: [{role: "user", content: "hi"}], max_tokens: 2}));
  // A read needs CORS, which the daemon does not grant to this origin.
  results.read = await fetch(target + "/api/tags").then(() => "read", () => "refused");
  document.title = JSON.stringify(results);
})();
</script>"""


def test_a_real_browser_page_on_another_origin_changes_nothing(guarded, browser):
    """What any web page the user visits could send: a headless Chromium page served from
    another local port fires the simple requests; none of them does anything."""
    import http.server
    import json
    import threading

    from tests.browser import open_page

    d = guarded
    page_html = (EVIL_PAGE % {"target": d.url}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page_html)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    before = httpx.get(d.url + "/api/tags", timeout=10).json()
    page, console = open_page(browser)
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_function("() => document.title.startsWith('{')", timeout=60_000)
        results = json.loads(page.title())
    finally:
        page.context.close()
        server.shutdown()
    assert results["read"] == "refused", results
    # The requests left the browser (opaque answers) but were refused: nothing changed,
    # the daemon still runs.
    assert httpx.get(d.url + "/api/tags", timeout=10).json() == before
    assert d.proc.poll() is None and httpx.get(d.url + "/health", timeout=10).status_code == 200
    log = d.log()
    assert log.count(" 403") >= 3 or log.count('"status": 403') >= 3, log[-3000:]
