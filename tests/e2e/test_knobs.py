"""A sampling knob added by its row in engine/knobs.py and the engine's sampler:
``typical_p`` (llama.cpp's locally typical sampling) through the real daemon, on the
OpenAI API, Ollama's options and llama-server's /completion."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MODEL

HEADER = "mullama-ignored-fields"
PROMPT = "Write a story about a dragon:"
# At temperature 2 two seeds write different texts; a typical_p so small that one token
# is left (min_keep 1) writes the same text whatever the seed.
HOT = {"temperature": 2.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
NARROW = 1e-6


def _completion(daemon, **fields) -> str:
    body = {"prompt": PROMPT, "n_predict": 16, **HOT, **fields}
    resp = httpx.post(daemon.url + "/completion", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    assert "typical_p" not in resp.headers.get(HEADER, "")
    return resp.json()["content"]


def test_llama_server_typical_p_reaches_the_sampler(daemon):
    assert _completion(daemon, seed=1) != _completion(daemon, seed=2)
    narrow = [_completion(daemon, seed=s, typical_p=NARROW) for s in (1, 2)]
    assert narrow[0] == narrow[1] and narrow[0]


def test_openai_typical_p_reaches_the_sampler(daemon):
    def complete(seed: int) -> str:
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 16, "seed": seed,
                "typical_p": NARROW, **HOT}  # fmt: skip
        resp = httpx.post(daemon.url + "/v1/completions", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        assert "typical_p" not in resp.headers.get(HEADER, "")
        return resp.json()["choices"][0]["text"]

    assert complete(1) == complete(2)


def test_ollama_typical_p_option_reaches_the_sampler(daemon):
    def generate(seed: int) -> str:
        body = {"model": MODEL, "prompt": PROMPT, "stream": False, "raw": True,
                "options": {"num_predict": 16, "seed": seed, "typical_p": NARROW, **HOT}}  # fmt: skip
        resp = httpx.post(daemon.url + "/api/generate", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        return resp.json()["response"]

    assert generate(1) == generate(2)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                               "typical_p": 1.5}, "typical_p"),
     ("/api/chat", {"model": MODEL, "messages": [], "options": {"typical_p": -0.5}},
      "options.typical_p"),
     ("/completion", {"prompt": "hi", "typical_p": 2}, "typical_p")],
)  # fmt: skip
def test_typical_p_out_of_its_bounds_is_refused_naming_the_field(daemon, path, body, param):
    resp = httpx.post(daemon.url + path, json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    assert param in resp.text
