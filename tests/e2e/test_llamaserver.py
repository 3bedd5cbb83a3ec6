"""Drop-in for llama-server users: its command line runs ``mullama serve`` unchanged, with
its meaning (-c is the total context, shared by the slots; LLAMA_API_KEY), and its
native /completion and /props answer in its shapes, through a plain HTTP client."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from mullama.models.registry import embedded_model_path
from tests.conftest import Daemon, free_port

PATH = str(embedded_model_path())
KEY = "sk-llama-" + "5" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server():
    """The deployment guides' command, with ``mullama serve`` for ``llama-server``."""
    port = free_port()
    args = ("--host", "127.0.0.1", "--port", str(port), "-m", PATH, "-a", "smol", "-c", "4096",
            "--parallel", "4", "--cont-batching", "--metrics", "-fa", "on")  # fmt: skip
    d = Daemon(*args, env={"LLAMA_API_KEY": KEY})
    d.url = f"http://127.0.0.1:{port}"  # --port wins over the harness's own port
    with d.wait_healthy():
        yield d


def test_the_llama_server_command_line_serves_with_its_meaning(server):
    assert httpx.get(server.url + "/v1/models").status_code == 401  # LLAMA_API_KEY holds
    models = httpx.get(server.url + "/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["smol"]  # -a names the -m model
    props = httpx.get(server.url + "/props", headers=AUTH).json()
    # -c 4096 is the total, shared by 4 slots, as llama-server divides it
    assert props["total_slots"] == 4 and props["default_generation_settings"]["n_ctx"] == 1024
    assert props["model_path"] == PATH and props["model_alias"] == "smol"
    assert "# HELP" in httpx.get(server.url + "/metrics", headers=AUTH).text
    status = httpx.get(server.url + "/api/system/status", headers=AUTH).json()
    assert status["models_loaded"][0]["flash_attn"] == "on"  # -fa on, not the default auto


def test_completion_whole_and_streamed(server):
    body = {"prompt": "The capital of France is", "n_predict": 12, "temperature": 0}
    whole = httpx.post(server.url + "/completion", json=body, headers=AUTH, timeout=60).json()
    assert whole["stop"] is True and whole["stop_type"] == "limit"
    assert whole["tokens_predicted"] == 12 and whole["tokens_evaluated"] > 0
    assert whole["timings"]["predicted_n"] == 12 and whole["timings"]["predicted_per_second"] > 0
    lines = httpx.post(server.url + "/completion", json={**body, "stream": True}, headers=AUTH,
                       timeout=60).text.strip().split("\n\n")  # fmt: skip
    events = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert all(not e["stop"] for e in events[:-1]) and events[-1]["stop"] is True
    assert "".join(e["content"] for e in events) == whole["content"]


def test_n_predict_zero_evaluates_the_prompt_into_the_cache(server):
    prompt = "A prompt to keep warm: " + " ".join(f"item {i}" for i in range(60))
    body = {"prompt": prompt, "n_predict": 0, "temperature": 0}
    warm = httpx.post(server.url + "/completion", json=body, headers=AUTH, timeout=60).json()
    assert warm["content"] == "" and warm["tokens_predicted"] == 0
    assert warm["stop_type"] == "limit" and warm["tokens_evaluated"] > 100
    # The next request with that prompt finds it in the KV cache.
    reply = httpx.post(server.url + "/completion", json={**body, "n_predict": 4}, headers=AUTH,
                       timeout=60).json()  # fmt: skip
    assert reply["tokens_predicted"] == 4
    assert reply["tokens_cached"] >= warm["tokens_evaluated"] - 1, reply


def test_completion_stop_words_and_refused_fields(server):
    body = {"prompt": "Count: 1, 2, 3,", "n_predict": 40, "temperature": 0, "stop": ["6"]}
    reply = httpx.post(server.url + "/completion", json=body, headers=AUTH, timeout=60).json()
    assert reply["stop_type"] == "word" and reply["stopping_word"] == "6"
    assert "6" not in reply["content"]
    bad = httpx.post(server.url + "/completion", json={"prompt": "x", "grammar": "root ::= x"},
                     headers=AUTH)  # fmt: skip
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "grammar"


def test_llama_server_flags_without_a_counterpart_say_what_to_do():
    out = subprocess.run([sys.executable, "-m", "mullama", "serve", "--chat-template-file", "t"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert "--chat-template-file" in out.stderr and "mullama create" in out.stderr


def test_n_predict_and_the_sampling_flags_are_applied():
    """llama-server's -n and its sampling defaults: every answer of the -m model has at
    most 8 tokens and is greedy (the same each time, as with temperature 0 asked), and
    /props and /api/show say so (a request's own values win: test_model_defaults.py)."""
    with Daemon("-m", PATH, "-n", "8", "--temp", "0", "--top-k", "1", "--seed", "3",
                "-c", "2048", "-np", "2").wait_healthy() as d:  # fmt: skip
        name = embedded_model_path().stem
        chat = {"model": name, "messages": [{"role": "user", "content": "Tell me a story."}]}
        replies = [httpx.post(d.url + "/v1/chat/completions", json=body, timeout=60).json()
                   for body in (chat, chat, {**chat, "temperature": 0})]  # fmt: skip
        texts = {r["choices"][0]["message"]["content"] for r in replies}
        assert len(texts) == 1, texts
        assert all(r["usage"]["completion_tokens"] <= 8 for r in replies)
        reply = httpx.post(d.url + "/completion", json={"prompt": "Once", "ignore_eos": True},
                           timeout=60).json()  # fmt: skip
        assert reply["tokens_predicted"] == 8
        params = httpx.get(d.url + "/props").json()["default_generation_settings"]["params"]
        assert (params["temperature"], params["top_k"], params["seed"]) == (0, 1, 3)
        assert params["n_predict"] == 8
        shown = httpx.post(d.url + "/api/show", json={"model": name}).json()["request_defaults"]
        assert shown["ollama"]["temperature"] == {"value": 0, "source": "--model-opt"}
        assert shown["openai"]["seed"] == {"value": 3, "source": "--model-opt"}


def test_a_llama_server_key_file_one_key_per_line(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# llama-server's format\nsk-first-key\nsk-second-key\n")
    with Daemon("--api-key-file", str(keys), "-c", "1024", "-np", "2").wait_healthy() as d:
        for key in ("sk-first-key", "sk-second-key"):
            headers = {"Authorization": f"Bearer {key}"}
            assert httpx.get(d.url + "/v1/models", headers=headers).status_code == 200
        assert (
            httpx.get(d.url + "/v1/models", headers={"Authorization": "Bearer no"}).status_code
            == 401
        )
