"""Defects the API fuzzer (tests/e2e/test_fuzz.py) found, each pinned here as pure code;
tests/e2e/test_fuzz_findings.py checks their answers over HTTP."""

from __future__ import annotations

from starlette.testclient import TestClient

from mullama.config import Settings
from mullama.daemon.app import create_app


def test_405_names_every_method_of_the_path(tmp_path):
    """Starlette's 405 named the methods of the first route that matched the path only
    (``Allow: GET`` on /v1/responses/ID, which takes DELETE too)."""
    app = create_app(Settings(cache_dir=str(tmp_path)))
    client = TestClient(app, base_url="http://127.0.0.1")  # the Host guard lets it in
    r = client.patch("/v1/responses/resp_1")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
    assert r.json()["error"]["code"] == "http_error"
    r = client.post("/api/version")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert r.json() == {"error": "Method Not Allowed"}
