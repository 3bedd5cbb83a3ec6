"""The response cache (--response-cache, --cache-url): a deterministic request asked again
comes back from the cache, in the same shapes as a live answer, with X-Mullama-Cache: hit
and zero computed tokens; Cache-Control opts out; a replaced or unloaded model's entries
are gone; a Redis cache is shared by two daemons and bypassed when Redis is down."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import httpx
import orjson
import pytest

from mullama.models.registry import embedded_model_path
from tests.conftest import Daemon, wait_for
from tests.e2e.test_health_dependencies import stop_redis
from tests.e2e.test_security_redis import redis_url  # noqa: F401 - the real redis-server

MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def cache_daemon():
    workdir = Path(tempfile.mkdtemp(prefix="mullama-cache-"))
    model = workdir / "cached.gguf"
    shutil.copyfile(embedded_model_path(), model)
    d = Daemon("--model", f"cached={model}", "--response-cache",
               "--parallel", "2", "--context-size", "1024").wait_healthy()  # fmt: skip
    d.model_file = model
    yield d
    d.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def _chat(d: Daemon, headers: dict | None = None, **extra) -> httpx.Response:
    body = {"model": "cached", "messages": MESSAGES, "max_tokens": 24, "temperature": 0, **extra}
    return httpx.post(d.url + "/v1/chat/completions", json=body, headers=headers, timeout=120)


def _stream(d: Daemon, **extra) -> tuple[str, list[bytes]]:
    body = {"model": "cached", "messages": MESSAGES, "max_tokens": 24, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, **extra}  # fmt: skip
    with httpx.stream("POST", d.url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        return r.headers["X-Mullama-Cache"], [line for line in r.iter_bytes() if line]


def _without_ids(events: list[bytes]) -> list[bytes]:
    """The stream with each chunk's id and creation time blanked (they are the response's
    own, never cached)."""
    joined = b"".join(events)
    return re.sub(rb'"id":"[^"]*","object":"([a-z.]+)","created":\d+', rb'"object":"\1"', joined)


def test_a_deterministic_answer_comes_back_from_the_cache(cache_daemon):
    d = cache_daemon
    first = _chat(d)
    again = _chat(d)
    assert first.headers["X-Mullama-Cache"] == "miss" and again.headers["X-Mullama-Cache"] == "hit"
    a, b = first.json(), again.json()
    assert orjson.dumps(a["choices"]) == orjson.dumps(b["choices"])  # byte for byte
    assert a["model"] == b["model"] == "cached" and a["id"] != b["id"]
    assert a["usage"]["completion_tokens"] > 0
    assert b["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                          "prompt_tokens_details": {"cached_tokens": 0}}  # fmt: skip


def test_a_streamed_hit_has_the_same_chunks_as_the_live_stream(cache_daemon):
    d = cache_daemon
    extra = {"max_tokens": 20}  # another request than the test above
    live_header, live = _stream(d, **extra)
    hit_header, hit = _stream(d, **extra)
    assert (live_header, hit_header) == ("miss", "hit")
    live_events = _without_ids(live).split(b"\n\n")
    hit_events = _without_ids(hit).split(b"\n\n")
    # Every chunk is the same but the usage chunk at the end: nothing was computed.
    assert live_events[:-3] == hit_events[:-3] and len(live_events) == len(hit_events) > 4
    assert b'"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0,' in hit_events[-3]
    assert hit_events[-2] == b"data: [DONE]"


def test_the_ollama_api_is_cached_too(cache_daemon):
    d = cache_daemon
    body = {"model": "cached", "messages": MESSAGES, "stream": True,
            "options": {"temperature": 0, "num_predict": 12}}  # fmt: skip

    def run() -> tuple[str, list[dict]]:
        with httpx.stream("POST", d.url + "/api/chat", json=body, timeout=120) as r:
            return r.headers["X-Mullama-Cache"], [orjson.loads(x) for x in r.iter_lines() if x]

    (h1, live), (h2, hit) = run(), run()
    assert (h1, h2) == ("miss", "hit")
    assert [x["message"] for x in live] == [x["message"] for x in hit]
    assert live[-1]["eval_count"] > 0 and hit[-1]["eval_count"] == 0
    assert hit[-1]["done_reason"] == live[-1]["done_reason"]


def test_cache_control_and_sampling_decide_what_is_cached(cache_daemon):
    d = cache_daemon
    extra = {"max_tokens": 8}
    assert _chat(d, **extra).headers["X-Mullama-Cache"] == "miss"
    # no-cache: computed afresh (and stored); no-store: the cache is not used at all.
    assert _chat(d, {"Cache-Control": "no-cache"}, **extra).headers["X-Mullama-Cache"] == "miss"
    assert _chat(d, {"Cache-Control": "no-store"}, **extra).headers["X-Mullama-Cache"] == "bypass"
    assert _chat(d, **extra).headers["X-Mullama-Cache"] == "hit"
    # Sampling without a seed is not deterministic: never cached. With a seed it is.
    random = {"max_tokens": 8, "temperature": 0.9}
    assert _chat(d, **random).headers["X-Mullama-Cache"] == "bypass"
    assert _chat(d, **random).headers["X-Mullama-Cache"] == "bypass"
    seeded = {**random, "seed": 1234}
    assert _chat(d, **seeded).headers["X-Mullama-Cache"] == "miss"
    assert _chat(d, **seeded).headers["X-Mullama-Cache"] == "hit"
    assert _chat(d, **{**seeded, "seed": 1235}).headers["X-Mullama-Cache"] == "miss"


def test_a_prompt_sent_to_warm_the_kv_cache_always_reaches_it(cache_daemon):
    """llama-server's n_predict: 0 evaluates a prompt into the KV cache: never answered
    from the response cache (that would warm nothing), so the real request that follows
    finds its prompt computed, however often the warm-up was sent."""
    d = cache_daemon
    prompt = "Warm me up: " + " ".join(f"entry {i}" for i in range(50))
    body = {"model": "cached", "prompt": prompt, "n_predict": 0, "temperature": 0}
    for _ in range(2):
        r = httpx.post(d.url + "/completion", json=body, timeout=120)
        assert r.status_code == 200 and r.headers["X-Mullama-Cache"] == "bypass", r.text
        assert r.json()["tokens_evaluated"] > 50
    # Another prompt takes the slot in between; the warmed one is found again.
    httpx.post(d.url + "/completion", json={**body, "prompt": "Something else entirely"},
               timeout=120)  # fmt: skip
    r = httpx.post(d.url + "/completion", json={**body, "n_predict": 3}, timeout=120)
    assert r.json()["tokens_cached"] >= r.json()["tokens_evaluated"] - 1, r.json()


def test_a_replaced_or_unloaded_model_has_no_cached_answers(cache_daemon):
    d = cache_daemon
    extra = {"max_tokens": 6}
    _chat(d, **extra)
    assert _chat(d, **extra).headers["X-Mullama-Cache"] == "hit"
    # Replace the file (another digest: the same model with trailing bytes).
    new = d.model_file.with_suffix(".new")
    shutil.copyfile(d.model_file, new)
    with new.open("ab") as f:
        f.write(b"\0" * 64)
    os.replace(new, d.model_file)
    assert _chat(d, **extra).headers["X-Mullama-Cache"] == "miss"
    assert _chat(d, **extra).headers["X-Mullama-Cache"] == "hit"
    # An operator's unload drops the model's entries.
    assert httpx.post(d.url + "/api/models/cached/unload", timeout=60).status_code == 200
    assert _chat(d, **extra).headers["X-Mullama-Cache"] == "miss"


def test_the_cache_is_counted_in_metrics(cache_daemon):
    d = cache_daemon
    _chat(d, max_tokens=5)
    _chat(d, max_tokens=5)
    text = httpx.get(d.url + "/metrics", timeout=10).text

    def value(name: str) -> float:
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert found, name
        return float(found.group(1))

    assert value('mullama_response_cache_hits_total{backend="memory",model="cached"}') >= 1
    assert value('mullama_response_cache_misses_total{backend="memory",model="cached"}') >= 1
    assert value("mullama_response_cache_bytes") > 0
    assert value("mullama_response_cache_entries") >= 1


def test_two_daemons_share_a_redis_cache_and_serve_on_when_it_stops(redis_url):  # noqa: F811
    args = ("--cache-url", redis_url, "--parallel", "1", "--context-size", "512")
    with Daemon(*args).wait_healthy() as a, Daemon(*args).wait_healthy() as b:
        body = {"model": "smollm2:135m", "messages": MESSAGES, "max_tokens": 10,
                "temperature": 0}  # fmt: skip

        def ask(d: Daemon) -> httpx.Response:
            return httpx.post(d.url + "/v1/chat/completions", json=body, timeout=120)

        first, second = ask(a), ask(b)
        assert first.headers["X-Mullama-Cache"] == "miss"
        assert second.headers["X-Mullama-Cache"] == "hit"  # computed by a, served by b
        assert first.json()["choices"] == second.json()["choices"]

        stop_redis(redis_url)
        down = ask(b)
        assert down.status_code == 200 and down.headers["X-Mullama-Cache"] == "bypass"
        assert down.json()["choices"] == first.json()["choices"]
        assert "response cache bypassed" in b.log()
        health = wait_for(lambda: (h := httpx.get(b.url + "/health", timeout=5).json())
                          ["dependencies"]["redis_cache"]["status"] == "down" and h)  # fmt: skip
        assert health["status"] == "degraded"
