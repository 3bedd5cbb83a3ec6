"""Several models at once: pinned and on-demand models, keep-alive, eviction under a count
and memory budget, bounded queues, crash isolation."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import openai
import pytest

from mullama.models.registry import embedded_model_path
from tests.conftest import Daemon, wait_for

PATH = str(embedded_model_path())


def _ps(d: Daemon, all_models: bool = False) -> dict[str, dict]:
    path = "/api/models" if all_models else "/api/ps"
    return {m["name"]: m for m in httpx.get(d.url + path, timeout=10).json()["models"]}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _complete(d: Daemon, model: str, max_tokens: int = 4, **extra) -> httpx.Response:
    body = {"model": model, "prompt": "Hello", "max_tokens": max_tokens, **extra}
    return httpx.post(d.url + "/v1/completions", json=body, timeout=120)


@pytest.fixture(scope="module")
def two_pinned():
    d = Daemon(
        "--model",
        f"alpha={PATH}",
        "--model",
        f"beta={PATH}",
        "--parallel",
        "2",
        "--context-size",
        "1024",
    ).wait_healthy()
    yield d
    d.stop()


def test_two_models_interleave(two_pinned):
    d = two_pinned
    assert set(_ps(d)) == {"alpha", "beta"}
    assert all(m["pinned"] for m in _ps(d).values())

    async def stream(client, model, streaming: asyncio.Event | None = None):
        first = None
        s = await client.completions.create(
            model=model,
            prompt="Tell a story",
            max_tokens=64,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        async for c in s:
            if first is None and c.choices and c.choices[0].text:
                first = time.monotonic()
                if streaming is not None:
                    streaming.set()
        return first, time.monotonic()

    async def run():
        client = openai.AsyncOpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
        alpha_streaming = asyncio.Event()
        try:
            a = asyncio.create_task(stream(client, "alpha", alpha_streaming))
            await asyncio.wait_for(alpha_streaming.wait(), 120)  # beta starts once alpha streams
            b = asyncio.create_task(stream(client, "beta"))
            return await a, await b
        finally:
            await client.close()

    (a_first, a_end), (b_first, b_end) = asyncio.run(run())
    assert b_first < a_end  # beta streamed while alpha was still generating


def test_kill_one_worker_under_load_isolates_it(two_pinned):
    d = two_pinned
    alpha_pid = _ps(d)["alpha"]["pid"]
    beta_results: list[int] = []
    alpha_results: list[int] = []
    started = threading.Event()

    def alpha_req():
        started.set()
        r = _complete(d, "alpha", max_tokens=400, ignore_eos=True)
        alpha_results.append(r.status_code)

    def beta_req():
        for _ in range(3):
            beta_results.append(_complete(d, "beta", max_tokens=30).status_code)

    threads = [threading.Thread(target=alpha_req) for _ in range(2)]
    threads.append(threading.Thread(target=beta_req))
    for t in threads:
        t.start()
    started.wait(30)
    # Both alpha requests must be in the worker when it dies; a request still on its
    # way would be served by the restarted worker.
    wait_for(lambda: _ps(d)["alpha"]["active_sequences"] >= 2, timeout=60)
    os.kill(alpha_pid, signal.SIGKILL)
    for t in threads:
        t.join(120)
    assert all(s >= 500 for s in alpha_results) and len(alpha_results) == 2, alpha_results
    assert beta_results == [200, 200, 200]
    assert _complete(d, "alpha").status_code == 200
    assert _ps(d)["alpha"]["pid"] != alpha_pid


def test_count_limit_evicts_idle_lru_and_reloads():
    d = Daemon(
        "--model",
        f"alpha={PATH}",
        "--model",
        f"beta={PATH}",
        "--model-opt",
        "alpha:pinned=false",
        "--model-opt",
        "beta:pinned=false",
        "--max-loaded-models",
        "1",
        "--parallel",
        "1",
        "--context-size",
        "512",
    ).wait_healthy()
    try:
        assert _ps(d) == {}  # not pinned: nothing loaded until asked
        assert _complete(d, "alpha").status_code == 200
        alpha_pid = _ps(d)["alpha"]["pid"]
        assert _complete(d, "beta").status_code == 200
        loaded = _ps(d)
        assert set(loaded) == {"beta"}
        assert not _pid_alive(alpha_pid)  # evicted: its process is gone
        assert _complete(d, "alpha").status_code == 200
        assert set(_ps(d)) == {"alpha"}
        everything = _ps(d, all_models=True)
        assert everything["beta"]["loaded"] is False and everything["alpha"]["loaded"] is True
    finally:
        d.stop()


def test_keep_alive_zero_and_expiry_unload():
    d = Daemon(
        "--model",
        f"alpha={PATH}",
        "--model-opt",
        "alpha:pinned=false",
        "--keep-alive",
        "2s",
        "--parallel",
        "1",
        "--context-size",
        "512",
    ).wait_healthy()
    try:
        ollama_body = {
            "model": "alpha",
            "prompt": "Hi",
            "stream": False,
            "keep_alive": 0,
            "options": {"num_predict": 3},
        }
        r = httpx.post(d.url + "/api/generate", json=ollama_body, timeout=120)
        assert r.status_code == 200
        # keep_alive 0: unloaded right after the request, the worker process is gone.
        wait_for(lambda: "alpha" not in _ps(d), timeout=30)
        # The OpenAI extension field does the same.
        assert _complete(d, "alpha", keep_alive="0s").status_code == 200
        wait_for(lambda: "alpha" not in _ps(d), timeout=30)
        # The default keep-alive (2s here) expires and unloads.
        assert _complete(d, "alpha").status_code == 200
        pid = _ps(d)["alpha"]["pid"]
        assert _ps(d)["alpha"]["expires_at"]
        wait_for(lambda: "alpha" not in _ps(d), timeout=60)
        wait_for(lambda: not _pid_alive(pid), timeout=30)  # its process exits, too
        # keep_alive -1 keeps it past the default.
        assert _complete(d, "alpha", keep_alive=-1).status_code == 200
        expires = datetime.fromisoformat(_ps(d)["alpha"]["expires_at"].replace("Z", "+00:00"))
        assert expires.year > datetime.now(UTC).year + 50  # never, as Ollama shows it
    finally:
        d.stop()


def test_too_small_memory_budget_is_refused_clearly():
    d = Daemon("--memory-budget", "50MiB", "--context-size", "512").wait_healthy()
    try:
        ready = httpx.get(d.url + "/health/ready", timeout=10)
        assert ready.status_code == 503
        assert "smollm2:135m" in ready.json()["failed_models"]
        r = _complete(d, "smollm2:135m")
        assert r.status_code == 507
        msg = r.json()["error"]["message"]
        assert "needs about" in msg and "50.0 MiB" in msg
        r = httpx.post(d.url + "/api/generate", json={"model": "smollm2:135m", "prompt": "x"})
        assert r.status_code == 507 and "memory budget" in r.json()["error"]
    finally:
        d.stop()


def test_queue_limit_gives_503_with_retry_after():
    d = Daemon("--parallel", "1", "--max-queue", "2", "--context-size", "1024").wait_healthy()
    try:
        with ThreadPoolExecutor(3) as pool:
            # One request holds the only slot, two wait in the queue: the limit is reached.
            held = [
                pool.submit(_complete, d, "smollm2:135m", max_tokens=200, ignore_eos=True)
                for _ in range(3)
            ]
            wait_for(
                lambda: (
                    (m := d.model_status())["active_sequences"] == 1 and m["queued_sequences"] == 2
                )
            )
            over = [_complete(d, "smollm2:135m", max_tokens=4) for _ in range(3)]
            assert [f.result().status_code for f in held] == [200, 200, 200]
        for r in over:
            assert r.status_code == 503
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["type"] == "server_error"
    finally:
        d.stop()


@pytest.mark.timeout(900)  # 50 rounds of process starts: a hang guard, on a shared machine
def test_load_unload_request_races_never_crash_or_hang():
    d = Daemon(
        "--model",
        f"alpha={PATH}",
        "--model-opt",
        "alpha:pinned=false",
        "--parallel",
        "2",
        "--context-size",
        "512",
    ).wait_healthy()
    try:

        async def run():
            async with httpx.AsyncClient(base_url=d.url, timeout=120) as c:
                for _ in range(50):
                    results = await asyncio.gather(
                        c.post("/api/models/alpha/load"),
                        c.post(
                            "/v1/completions",
                            json={"model": "alpha", "prompt": "Hi", "max_tokens": 3},
                        ),
                        c.post("/api/models/alpha/unload"),
                        c.post(
                            "/api/generate",
                            json={
                                "model": "alpha",
                                "prompt": "Yo",
                                "stream": False,
                                "options": {"num_predict": 2},
                            },
                        ),
                    )
                    for r in results:
                        assert r.status_code in (200, 502, 503), r.text

        asyncio.run(run())
        assert _complete(d, "alpha").status_code == 200
        assert d.proc.poll() is None
    finally:
        d.stop()


def test_a_model_that_can_never_fit_beside_the_pinned_ones_fails_at_once():
    """--max-loaded-models 1 and a pinned model: another model can never be loaded, so
    its request is a 503 at once naming what holds the room, not a wait for the whole
    --load-timeout (the client's 120 s timeout is the hang guard: the load timeout is
    300 s). The pinned model keeps serving."""
    with Daemon(
        "--model", f"alpha={PATH}", "--model", f"beta={PATH}", "--model-opt",
        "beta:pinned=false", "--max-loaded-models", "1", "--parallel", "1",
        "--context-size", "512", "--load-timeout", "300",
    ).wait_healthy() as d:  # fmt: skip
        refused = _complete(d, "beta")
        assert refused.status_code == 503
        message = refused.json()["error"]["message"]
        assert "alpha" in message and "pinned" in message and "max-loaded-models" in message
        assert _complete(d, "alpha").status_code == 200
