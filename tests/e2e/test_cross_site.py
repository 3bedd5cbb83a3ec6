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
