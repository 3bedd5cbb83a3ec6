"""Bounds on the request knobs that size work or memory (docs/API.md, Limits): the same
limit on every API, a 400 in the API's own shape naming its field where a value is
refused, the model's bound where it is clamped."""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.conftest import MODEL

MSG = [{"role": "user", "content": "hi"}]
# The request: 300,000 stop strings made a 24-token reply take 9.4 s instead of
# 0.6 s, with every sequence of the model waiting on those steps.
MANY_STOPS = [f"s{i}" for i in range(300_000)]
LONG_STOP = "z" * 1001


@pytest.fixture(scope="module")
def ollama_client(daemon) -> ollama.Client:
    return ollama.Client(host=daemon.url, timeout=120)


@pytest.fixture(scope="module")
def anthropic_client(daemon):
    client = anthropic.Anthropic(base_url=daemon.url, api_key="unused", max_retries=0)
    yield client
    client.close()


def _ollama_refused(call) -> str:
    with pytest.raises(ollama.ResponseError) as info:
        call()
    assert info.value.status_code == 400
    return info.value.error


@pytest.mark.parametrize("stop", [MANY_STOPS, [LONG_STOP]], ids=["300k stops", "long stop"])
def test_ollama_stop_strings_are_bounded(ollama_client, stop):
    opts = {"stop": stop, "num_predict": 4}
    msg = _ollama_refused(lambda: ollama_client.generate(MODEL, "hi", options=opts))
    assert "options.stop" in msg
    assert "at most 16 stop strings, not 300000" in msg or "at most 1000" in msg
    msg = _ollama_refused(lambda: ollama_client.chat(MODEL, MSG, options=opts))
    assert "options.stop" in msg


@pytest.mark.parametrize("stop", [MANY_STOPS, [LONG_STOP]], ids=["300k stops", "long stop"])
def test_openai_stop_strings_have_the_same_bounds(openai_client, stop):
    for call in (
        lambda: openai_client.chat.completions.create(
            model=MODEL, messages=MSG, stop=stop, max_tokens=4
        ),
        lambda: openai_client.completions.create(model=MODEL, prompt="hi", stop=stop, max_tokens=4),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            call()
        err = info.value.body
        assert err["param"] == "stop"
        assert "at most 16 stop strings" in err["message"] or "at most 1000" in err["message"]


@pytest.mark.parametrize("stop", [MANY_STOPS, [LONG_STOP]], ids=["300k stops", "long stop"])
def test_anthropic_stop_sequences_have_the_same_bounds(anthropic_client, stop):
    with pytest.raises(anthropic.BadRequestError) as info:
        anthropic_client.messages.create(
            model=MODEL, max_tokens=4, messages=MSG, stop_sequences=stop
        )
    err = info.value.body["error"]
    assert err["type"] == "invalid_request_error"
    assert "stop_sequences" in err["message"]


@pytest.mark.parametrize("stop", [MANY_STOPS, [LONG_STOP]], ids=["300k stops", "long stop"])
def test_llama_server_stop_has_the_same_bounds(daemon, stop):
    resp = httpx.post(
        daemon.url + "/completion",
        json={"model": MODEL, "prompt": "hi", "n_predict": 4, "stop": stop},
        timeout=60,
    )
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == "stop"


def test_stop_strings_at_the_limit_are_served(ollama_client):
    opts = {"stop": [f"never{i}" for i in range(15)] + ["z" * 1000], "num_predict": 4}
    assert ollama_client.generate(MODEL, "hi", options=opts).done


# ---- repeat_last_n: clamped to the context; -1 is the context ------------------------

PENALIZED = {"temperature": 0, "repeat_penalty": 2.0, "num_predict": 24}
# Greedy, the model goes on writing " 1": the penalty on what it wrote changes that.
REPEATS = "1 1 1 1 1 1 1 1"
PROMPT = "Write the word 'the' ten times: the the the"


def _ollama_text(client: ollama.Client, window: int) -> str:
    opts = {**PENALIZED, "repeat_last_n": window}
    return client.generate(MODEL, REPEATS, raw=True, options=opts).response


def _llama_server_text(daemon, window: int) -> str:
    body = {"model": MODEL, "prompt": REPEATS, "n_predict": 24, "temperature": 0,
            "repeat_penalty": 2.0, "repeat_last_n": window}  # fmt: skip
    resp = httpx.post(daemon.url + "/completion", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()["content"]


def test_ollama_repeat_last_n_minus_one_is_the_whole_context(ollama_client):
    """Ollama's -1 is the context size (it was passed to llama.cpp as is, which takes it
    as 0: no penalty at all)."""
    off = _ollama_text(ollama_client, 0)
    whole = _ollama_text(ollama_client, -1)
    assert whole != off, "the penalty changes this answer; -1 must not turn it off"
    assert whole == _ollama_text(ollama_client, 2048)


def _peak_rss(daemon) -> int:
    """The worker's peak resident memory so far (VmHWM), in bytes."""
    status = Path(f"/proc/{daemon.model_status()['pid']}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def test_ollama_repeat_last_n_beyond_the_context_is_the_context(ollama_client, daemon):
    """2e9 went to llama.cpp's penalty sampler as is: a window of 2e9 tokens, 8 GB of
    the worker's memory for one request."""
    whole = _ollama_text(ollama_client, 2048)
    before = _peak_rss(daemon)
    assert _ollama_text(ollama_client, 2_000_000_000) == whole
    assert _peak_rss(daemon) - before < 256 * 2**20


def test_llama_server_repeat_last_n_is_honoured_and_bounded(daemon):
    """/completion's repeat_last_n was accepted and dropped; now it is the same knob as
    Ollama's, with the same bound."""
    off = _llama_server_text(daemon, 0)
    whole = _llama_server_text(daemon, -1)
    assert whole != off
    assert _llama_server_text(daemon, 2_000_000_000) == whole


# ---- top_k: at or over the vocabulary is off ---------------------------------------


def test_a_top_k_past_32_bits_keeps_every_token(ollama_client):
    """2**32 + 1 reached llama.cpp as a 32-bit 1: a sampled answer turned greedy."""
    opts = {"temperature": 1.0, "top_p": 1.0, "min_p": 0.0, "seed": 11, "num_predict": 24}

    def text(top_k: int) -> str:
        return ollama_client.generate(MODEL, PROMPT, options={**opts, "top_k": top_k}).response

    free = text(0)
    assert text(1) != free, "this seed samples a token other than the likeliest"
    assert text(2**32 + 1) == free


# ---- seed, inputs, prompts -----------------------------------------------------------


def test_a_seed_beyond_64_bits_is_refused_not_a_server_error(openai_client, ollama_client):
    """With n > 1 each answer's seed is seed + i: 2**64 - 1 + 1 could not be sent to the
    worker (a 500)."""
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(
            model=MODEL, messages=MSG, max_tokens=2, n=2, seed=2**64 - 1
        )
    assert info.value.body["param"] == "seed"
    msg = _ollama_refused(lambda: ollama_client.generate(MODEL, "hi", options={"seed": 2**64 - 1}))
    assert "options.seed" in msg


def test_embedding_inputs_have_the_same_bound_on_both_apis(openai_client, ollama_client):
    inputs = ["a"] * 2049
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.embeddings.create(model=MODEL, input=inputs)
    assert "at most 2048 inputs" in info.value.body["message"]
    msg = _ollama_refused(lambda: ollama_client.embed(MODEL, inputs))
    assert "at most 2048 inputs" in msg and "input" in msg


def test_completions_per_request_are_bounded(openai_client):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.completions.create(model=MODEL, prompt=["a"] * 1025, n=2, max_tokens=1)
    assert info.value.body["param"] == "prompt"
    assert "at most 2048 completions" in info.value.body["message"]
