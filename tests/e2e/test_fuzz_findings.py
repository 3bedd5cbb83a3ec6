"""Defects the API fuzzer (tests/e2e/test_fuzz.py) found, checked over HTTP on the shared
daemon: each is now a 4xx in the route's API shape (never a 500), or a correct header."""

from __future__ import annotations

import httpx


def _openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_405_names_every_method_of_the_path(daemon):
    r = httpx.request("PATCH", daemon.url + "/v1/responses/resp_x", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
    r = httpx.request("OPTIONS", daemon.url + "/", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
