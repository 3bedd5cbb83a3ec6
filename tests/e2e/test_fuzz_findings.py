"""Defects the API fuzzer (tests/e2e/test_fuzz.py) found, checked over HTTP on the shared
daemon: each is now a 4xx in the route's API shape (never a 500), or a correct header."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.conftest import MODEL


def _openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_completion_with_an_empty_prompt_list(daemon):
    r = httpx.post(daemon.url + "/completion", json={"prompt": []}, timeout=30)
    assert _openai_error(r, 400)["param"] == "prompt"


def test_a_model_name_too_long_for_a_file_name(daemon):
    r = httpx.get(daemon.url + "/v1/tokenizer_info", params={"model": "é" * 600}, timeout=30)
    assert _openai_error(r, 400)["code"] == "invalid_model_name"
    r = httpx.post(daemon.url + "/api/show", json={"model": "x" * 600}, timeout=30)
    assert r.status_code == 400 and isinstance(r.json()["error"], str)


def test_a_model_name_that_is_a_relative_path_to_a_file(daemon):
    rel = os.path.relpath(__file__)  # the daemon runs in the tests' working directory
    if rel.startswith(".."):
        pytest.skip("the tests run from outside the repository")
    r = httpx.get(f"{daemon.url}/v1/models/{rel}", timeout=30)
    assert _openai_error(r, 404)["code"] == "model_not_found"


def test_a_refused_field_with_a_value_equal_to_its_neutral_one(daemon):
    body = {"model": MODEL, "input": "hi", "background": 0}
    r = httpx.post(daemon.url + "/v1/responses", json=body, timeout=30)
    assert _openai_error(r, 400)["param"] == "background"


def test_a_keep_alive_past_any_date_leaves_the_listings_working(daemon):
    """An unpinned model given keep_alive 1e300 made /api/ps and /api/models 500s."""
    pin = f"{daemon.url}/api/models/{MODEL}"
    assert httpx.post(pin + "/unpin", timeout=30).status_code == 200
    try:
        body = {"model": MODEL, "prompt": "hi", "stream": False, "keep_alive": 1e300,
                "options": {"num_predict": 2}}  # fmt: skip
        assert httpx.post(daemon.url + "/api/generate", json=body, timeout=60).status_code == 200
        for path in ("/api/ps", "/api/models"):
            r = httpx.get(daemon.url + path, timeout=30)
            assert r.status_code == 200, r.text
            (model,) = [m for m in r.json()["models"] if m["name"] == MODEL]
            assert model["expires_at"].startswith("2"), model  # forever: a date a century on
    finally:
        assert httpx.post(pin + "/pin", timeout=30).status_code == 200


def test_an_error_names_the_field_not_a_union_member(daemon):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "tool_choice": {"type": "function", "function": {"name": 5}}}  # fmt: skip
    r = httpx.post(daemon.url + "/v1/chat/completions", json=body, timeout=30)
    assert _openai_error(r, 400)["param"] == "tool_choice.function.name"


def test_generate_refuses_a_context_by_name(daemon):
    body = {"model": MODEL, "prompt": "hi", "context": [1, 2, 3], "stream": False}
    r = httpx.post(daemon.url + "/api/generate", json=body, timeout=30)
    assert r.status_code == 400 and "'context' is not supported" in r.json()["error"]


def test_405_names_every_method_of_the_path(daemon):
    r = httpx.request("PATCH", daemon.url + "/v1/responses/resp_x", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
    r = httpx.request("OPTIONS", daemon.url + "/", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
