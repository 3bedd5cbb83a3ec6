"""API keys, admin scope, host guard, rate limits, header limits and slow clients, against
the real daemon with real clients."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx
import ollama
import openai
import pytest

from tests.conftest import MODEL, Daemon, wait_for

ADMIN = "sk-admin-" + "1" * 24
INFER = "sk-infer-" + "2" * 24
LIMITED = "sk-limit-" + "3" * 24
TOKENS = "sk-token-" + "4" * 24
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(
        f"keys:\n"
        f"  - {{name: ops, key: {ADMIN}, scope: admin}}\n"
        f"  - {{name: app, key: {INFER}, scope: inference}}\n"
        f"  - {{name: limited, key: {LIMITED}, requests_per_minute: 2}}\n"
        f"  - {{name: tokens, key: {TOKENS}, tokens_per_minute: 10}}\n"
    )
    d = Daemon(
        "--api-key-file", str(keys), "--parallel", "2", "--context-size", "512",
        "--cors-origins", "http://app.example",
    ).wait_healthy()  # fmt: skip
    yield d
    d.stop()


def _get(d, path, **kw):
    return httpx.get(d.url + path, timeout=30, **kw)


def test_no_key_and_wrong_key_are_401_in_each_api_shape(secured):
    r = _get(secured, "/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == "Bearer"
    r = _get(secured, "/api/tags")
    assert r.status_code == 401 and isinstance(r.json()["error"], str)
    assert _get(secured, "/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert _get(secured, "/api/tags", headers={"X-API-Key": "nope"}).status_code == 401
    assert _get(secured, "/v1/models", headers={"Authorization": INFER}).status_code == 401
    assert _get(secured, "/health").status_code == 200
    assert _get(secured, "/health/ready").status_code == 200


def test_key_in_either_header(secured):
    assert _get(secured, "/v1/models", headers={"Authorization": f"Bearer {INFER}"}).is_success
    assert _get(secured, "/api/tags", headers={"X-API-Key": INFER}).is_success


def test_real_clients(secured):
    bad = openai.OpenAI(base_url=secured.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    good = openai.OpenAI(base_url=secured.url + "/v1", api_key=INFER, max_retries=0)
    reply = good.chat.completions.create(model=MODEL, messages=MSG, max_tokens=3)
    assert reply.choices[0].message.content is not None
    client = ollama.Client(host=secured.url, headers={"Authorization": f"Bearer {INFER}"})
    assert client.list().models
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=secured.url).list()
    assert info.value.status_code == 401


def test_inference_key_on_admin_route_is_403(secured):
    for path in ("/api/daemon/stop", "/api/pull", "/api/models/x/unload"):
        r = httpx.post(secured.url + path, headers={"X-API-Key": INFER}, json={})
        assert r.status_code == 403, (path, r.text)
        assert "admin" in r.json()["error"]
    # An admin key passes the check (the route itself may not exist on this branch).
    r = httpx.post(secured.url + "/api/pull", headers={"X-API-Key": ADMIN}, json={})
    assert r.status_code not in (401, 403)


def _raw(d: Daemon, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", d.port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_host_guard_and_host_tricks(secured):
    h = {"X-API-Key": INFER}
    r = _get(secured, "/v1/models", headers={**h, "Host": "evil.example"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert _get(secured, "/v1/models", headers={**h, "Host": "localhost:1234"}).is_success
    # A Host that would rebuild to a public URL does not make the path public.
    for host in (b"x/?", b"127.0.0.1/health?", b"localhost/health#"):
        resp = _raw(
            secured, b"GET /v1/models HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        )
        assert resp.split(b" ")[1] in (b"401", b"403"), resp[:200]
    for path in (
        b"/health/../v1/models",
        b"/health/%2e%2e/v1/models",
        b"//health",
        b"/health?x=/v1",
    ):
        resp = _raw(
            secured, b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        status = resp.split(b" ")[1]
        assert status == (b"200" if path.startswith(b"/health?") else b"401"), (path, resp[:200])
    resp = _raw(
        secured,
        b"GET http://localhost/health/../v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    assert resp.split(b" ")[1] == b"401"


def test_cors(secured):
    pre = httpx.options(
        secured.url + "/v1/chat/completions",
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "http://app.example"
    other = httpx.options(
        secured.url + "/v1/models",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in other.headers


def test_request_rate_limit_429(secured):
    client = openai.OpenAI(base_url=secured.url + "/v1", api_key=LIMITED, max_retries=0)
    ok = client.models.with_raw_response.list()
    assert ok.headers["x-ratelimit-limit-requests"] == "2"
    client.models.list()
    with pytest.raises(openai.RateLimitError) as info:
        client.models.list()
    resp = info.value.response
    assert resp.status_code == 429
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    assert resp.json()["error"]["type"] == "rate_limit_error"
    # Ollama shape under /api/, and other keys are not affected.
    r = _get(secured, "/api/tags", headers={"X-API-Key": LIMITED})
    assert r.status_code == 429 and isinstance(r.json()["error"], str)
    assert _get(secured, "/api/tags", headers={"X-API-Key": INFER}).is_success


def test_token_rate_limit(secured):
    client = openai.OpenAI(base_url=secured.url + "/v1", api_key=TOKENS, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=MSG, max_tokens=12, stream=True, extra_body={"ignore_eos": True}
    )
    assert sum(1 for _ in stream) > 0
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=2)
    assert "tokens per minute" in info.value.response.json()["error"]["message"]
    assert info.value.response.headers["x-ratelimit-remaining-tokens"] == "0"


def test_header_limits(secured):
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    resp = _raw(secured, b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + many + b"\r\n")
    assert resp.startswith(b"HTTP/1.1 431"), resp[:100]
    big = b"X-Big: " + b"a" * 40000 + b"\r\n"
    resp = _raw(secured, b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + big + b"\r\n")
    assert resp.startswith(b"HTTP/1.1 431"), resp[:100]
    assert _get(secured, "/health").status_code == 200


def test_body_limit_with_a_lying_content_length(secured):
    # Declares a small body, then keeps sending as chunked would; and declares a huge one.
    body = b'{"model": "x", "prompt": "' + b"a" * (11 * 1024 * 1024) + b'"}'
    r = httpx.post(secured.url + "/v1/completions", content=body, headers={"X-API-Key": INFER})
    assert r.status_code == 413
    resp = _raw(
        secured,
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nX-API-Key: " + INFER.encode()
        + b"\r\nContent-Length: 99999999999\r\nConnection: close\r\n\r\n{}",
    )  # fmt: skip
    assert resp.split(b" ")[1] == b"413", resp[:200]


def test_slow_client_is_cut_off():
    d = Daemon("--read-timeout", "1", "--parallel", "1", "--context-size", "256").wait_healthy()
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=30) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n")
            started = time.monotonic()
            closed = b""
            for _ in range(60):  # a header byte every half second
                try:
                    s.sendall(b"X")
                    s.settimeout(0.5)
                    closed = s.recv(4096)
                    if closed or time.monotonic() - started > 30:
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed = b"reset"
                    break
            assert closed, "the slow client was never cut off"
            assert closed == b"reset" or closed.startswith(b"HTTP/1.1 408") or closed == b""
        # The daemon keeps serving normal clients.
        wait_for(lambda: httpx.get(d.url + "/health", timeout=5).status_code == 200)
    finally:
        d.stop()


def _non_loopback_ip() -> str | None:
    """An IPv4 address of this machine's own interfaces (read locally; nothing is sent)."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    for addr in out.stdout.split():
        if "." in addr and not addr.startswith("127."):
            return addr
    return None


def test_exposed_without_keys_refuses_remote_admin():
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("no non-loopback address on this machine")
    d = Daemon("--http-addr", "0.0.0.0", "--parallel", "1", "--context-size", "256").wait_healthy()
    try:
        assert "NO API KEY" in d.log()
        remote = f"http://{ip}:{d.port}"
        assert httpx.get(remote + "/v1/models", timeout=10).is_success  # inference stays open
        r = httpx.post(remote + "/api/daemon/stop", json={}, timeout=10)
        assert r.status_code == 403 and "allow-remote-admin" in r.json()["error"]
        r = httpx.post(remote + "/api/pull", json={}, timeout=10)
        assert r.status_code == 403
        # Not a loopback bind: no Host check.
        assert httpx.get(remote + "/v1/models", headers={"Host": "any.example"}).is_success
    finally:
        d.stop()


def test_duplicated_headers_are_not_a_way_around_the_checks(secured):
    # Two different keys: which one would count is refused outright.
    for headers in (
        b"Authorization: Bearer " + INFER.encode() + b"\r\nAuthorization: Bearer " + ADMIN.encode(),
        b"X-API-Key: " + INFER.encode() + b"\r\nAuthorization: Bearer sk-other",
    ):
        resp = _raw(secured, b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n" + headers +
                    b"\r\nConnection: close\r\n\r\n")  # fmt: skip
        assert resp.split(b" ")[1] == b"401" and b"more than one API key" in resp, resp[:300]
    # The same key twice is one key.
    same = b"X-API-Key: " + INFER.encode() + b"\r\nAuthorization: Bearer " + INFER.encode()
    resp = _raw(secured, b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n" + same +
                b"\r\nConnection: close\r\n\r\n")  # fmt: skip
    assert resp.split(b" ")[1] == b"200"
    # A second Host that is not loopback: refused (every Host header is checked).
    resp = _raw(secured, b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n"
                b"X-API-Key: " + INFER.encode() + b"\r\nConnection: close\r\n\r\n")  # fmt: skip
    assert resp.split(b" ")[1] in (b"400", b"403"), resp[:200]
    # Two Content-Length headers that disagree (request smuggling): a 400, never served.
    resp = _raw(secured, b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                b"X-API-Key: " + INFER.encode() + b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: 2\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{}")  # fmt: skip
    assert resp.split(b" ")[1] == b"400", resp[:200]
    assert httpx.get(secured.url + "/health", timeout=10).status_code == 200


def test_keys_never_reach_logs_or_metrics(secured):
    wrong = "sk-wrong-" + "9" * 24
    for key in (ADMIN, INFER, wrong):
        _get(secured, "/v1/models", headers={"Authorization": f"Bearer {key}"})
        _get(secured, "/api/tags", headers={"X-API-Key": key})
    metrics = _get(secured, "/metrics", headers={"X-API-Key": ADMIN}).text
    log = secured.log()
    for key in (ADMIN, INFER, LIMITED, TOKENS, wrong):
        assert key not in log and key not in metrics
        assert key[9:] not in log  # nor the secret part alone
