"""Fallback models (--fallback PRIMARY=BACKUP): a request whose model is broken or full
is answered by the backup, and the response says so; a request can opt out; cycles are
refused at start."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from mullama.models.registry import embedded_model_path
from tests.conftest import Daemon, wait_for
from tests.hubstub import tiny_gguf

PATH = str(embedded_model_path())
CHAT = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def fallback_daemon():
    # GGUF files that pass the GGUF check (a file that fails it stops the start) but that
    # llama.cpp cannot load: the model's own fault, found when it is loaded.
    broken = Path(tempfile.mkdtemp(prefix="mullama-fallback-"))
    tiny_gguf(broken / "broken.gguf")
    tiny_gguf(broken / "chain.gguf")
    d = Daemon(
        "--model", f"backup={PATH}", "--model", f"busy={PATH}",
        "--model", f"broken={broken / 'broken.gguf'}", "--model", f"chain={broken / 'chain.gguf'}",
        "--fallback", "broken=backup", "--fallback", "busy=backup", "--fallback", "chain=broken",
        "--model-opt", "busy:parallel=1", "--max-queue", "0",
        "--parallel", "2", "--context-size", "1024",
    ).wait_healthy()  # fmt: skip
    yield d
    d.stop()


def _chat(d: Daemon, model: str, headers: dict | None = None, **extra) -> httpx.Response:
    return httpx.post(d.url + "/v1/chat/completions", json={"model": model, **CHAT, **extra},
                      headers=headers, timeout=120)  # fmt: skip


def _fallbacks(d: Daemon, model: str, fallback: str) -> float:
    for line in httpx.get(d.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f'mullama_fallbacks_total{{fallback="{fallback}",model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_broken_model_is_answered_by_its_backup_and_the_response_says_so(fallback_daemon):
    d = fallback_daemon
    client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="broken", **CHAT)
    assert raw.headers["X-Mullama-Fallback"] == "broken->backup"
    reply = raw.parse()
    assert reply.model == "backup" and reply.choices[0].message.content

    # The Ollama API, streamed: every line names the model that answered.
    with httpx.stream("POST", d.url + "/api/chat", timeout=120,
                      json={"model": "broken", "messages": CHAT["messages"],
                            "options": {"num_predict": 4}}) as r:  # fmt: skip
        assert r.status_code == 200
        assert r.headers["X-Mullama-Fallback"] == "broken->backup"
        lines = [orjson.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] and {line["model"] for line in lines} == {"backup"}
    assert _fallbacks(d, "broken", "backup") >= 2


def test_a_chain_of_fallbacks_is_followed_and_named(fallback_daemon):
    r = _chat(fallback_daemon, "chain")
    assert r.status_code == 200, r.text
    assert r.headers["X-Mullama-Fallback"] == "chain->broken->backup"
    assert r.json()["model"] == "backup"


def test_a_request_can_opt_out_of_its_fallback(fallback_daemon):
    d = fallback_daemon
    for r in (_chat(d, "broken", fallback=False),
              _chat(d, "broken", headers={"X-Mullama-Fallback": "off"})):  # fmt: skip
        assert r.status_code >= 500 and "X-Mullama-Fallback" not in r.headers
        assert "broken" in r.json()["error"]["message"]
    r = httpx.post(d.url + "/api/generate", timeout=60,
                   json={"model": "broken", "prompt": "hi", "stream": False, "fallback": False})  # fmt: skip
    assert r.status_code >= 500 and "broken" in r.json()["error"]


def test_a_full_model_is_answered_by_its_backup(fallback_daemon):
    """busy has one slot and no queue: while a long answer holds it, the next request
    goes to backup instead of a 503; the long answer still comes from busy."""
    d = fallback_daemon
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(_chat, d, "busy", max_tokens=300, ignore_eos=True)
        wait_for(lambda: d.model_status("busy")["active_sequences"] == 1)
        r = _chat(d, "busy")
        assert r.status_code == 200, r.text
        assert r.headers["X-Mullama-Fallback"] == "busy->backup"
        assert r.json()["model"] == "backup"
        assert _chat(d, "busy", fallback=False).status_code == 503  # no fallback: full
        first = held.result()
    assert first.status_code == 200 and first.json()["model"] == "busy"
    assert "X-Mullama-Fallback" not in first.headers


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--fallback", "a=b", "--fallback", "b=a"), "a cycle (a -> b -> a)"),
        (("--fallback", "a=nope"), "there is no model 'nope'"),
        (("--fallback", "a=b", "--fallback", "a=c"), "one backup per model"),
    ],
)
def test_a_bad_fallback_configuration_is_refused_at_start(flags, message):
    proc = subprocess.run(
        [sys.executable, "-m", "mullama", "serve", "--http-port", "0",
         "--model", f"a={PATH}", "--model", f"b={PATH}", "--model", f"c={PATH}", *flags],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_a_broken_models_error_names_the_model_not_its_file(fallback_daemon):
    r = _chat(fallback_daemon, "broken", fallback=False)
    message = r.json()["error"]["message"]
    assert "'broken'" in message and "cannot be loaded" in message
    assert "/" not in message and ".gguf" not in message  # no file-system path
    assert "broken.gguf" in fallback_daemon.log()  # the operator's log has it
