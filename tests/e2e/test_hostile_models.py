"""Hostile model files and templates against the running daemon: each is refused with a
clear error naming the model (on pull, on create, and when it is already in the store),
nothing half-written is left, and the daemon and its other models keep serving. (The
file corpus itself: tests/unit/test_hostile_files.py; a bad --model at start:
tests/e2e/test_store.py.)"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL, Daemon
from tests.hubstub import HubServer, tiny_gguf
from tests.unit.test_hostile_files import HOSTILE_TEMPLATES

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Renders like ChatML for the two messages `create` tries it with; with more, it loops.
LATE_BOMB = (
    "{% if messages|length > 2 %}{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}{% endif %}" + CHATML
)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    hub = HubServer()
    good = tiny_gguf(root / "tiny.gguf", 200_000)
    hub.hub.add("test/Tiny-GGUF", "tiny-Q4_K_M.gguf", good)
    (root / "cut.gguf").write_bytes(good.read_bytes()[:-1000])
    hub.hub.add("test/Cut-GGUF", "cut-Q4_K_M.gguf", root / "cut.gguf")
    cache = root / "cache"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "MULLAMA_CACHE_DIR": str(cache),
           "HF_TOKEN": "hf_test_token"}  # fmt: skip
    d = Daemon("--parallel", "2", "--context-size", "512", env=env).wait_healthy()
    d.cache = cache
    yield d
    d.stop()
    hub.close()


def _chat(d: Daemon, model: str, n_messages: int = 1) -> httpx.Response:
    messages = [{"role": "user", "content": f"hi {i}"} for i in range(n_messages)]
    body = {"model": model, "messages": messages, "max_tokens": 4}
    return httpx.post(d.url + "/v1/chat/completions", json=body, timeout=120)


def _serves(d: Daemon) -> None:
    assert d.proc.poll() is None
    assert _chat(d, MODEL).status_code == 200


def _store_files(cache: Path) -> set[str]:
    return {str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()}


def test_a_truncated_pull_is_refused_and_leaves_nothing(hostile):
    d = hostile
    before = _store_files(d.cache)
    r = httpx.post(d.url + "/api/pull", json={"model": "hf.co/test/Cut-GGUF", "stream": False},
                   timeout=120)  # fmt: skip
    assert r.status_code >= 400
    error = r.json()["error"]
    assert "hf.co/test/Cut-GGUF" in error and "not a usable GGUF" in error, error
    assert str(d.cache) not in error
    assert not any("Cut" in m["name"] for m in httpx.get(d.url + "/api/tags").json()["models"])
    after = _store_files(d.cache)
    leftovers = [f for f in after - before if not f.startswith(("locks/", "hub/"))]
    assert leftovers == [], leftovers  # no manifest, no blob, no partial download
    _serves(d)


@pytest.mark.parametrize(
    "name", ["sandbox escape", "nested loops", "string repetition", "doubling in a namespace"]
)
def test_hostile_templates_are_refused_on_create(hostile, name):
    d = hostile
    with ThreadPoolExecutor(1) as pool:  # the default model answers meanwhile
        other = pool.submit(_chat, d, MODEL)
        r = httpx.post(d.url + "/api/create", timeout=120, json={
            "model": "evil", "from": MODEL, "template": HOSTILE_TEMPLATES[name],
            "stream": False})  # fmt: skip
        assert other.result().status_code == 200
    assert r.status_code == 400, r.text
    assert "template" in r.json()["error"]
    assert not any(
        m["name"].startswith("evil") for m in httpx.get(d.url + "/api/tags").json()["models"]
    )
    _serves(d)


def test_a_template_that_explodes_at_request_time_fails_that_request_alone(hostile):
    d = hostile
    r = httpx.post(d.url + "/api/create", timeout=120, json={
        "model": "late-bomb", "from": MODEL, "template": LATE_BOMB, "stream": False})  # fmt: skip
    assert r.status_code == 200, r.text
    with ThreadPoolExecutor(2) as pool:
        bomb = pool.submit(_chat, d, "late-bomb", 3)
        plain = pool.submit(_chat, d, MODEL)
        assert plain.result().status_code == 200
        r = bomb.result()
    assert r.status_code == 400, r.text
    assert "chat template ran out of its budget: it took more than" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "messages"
    assert _chat(d, "late-bomb", 1).status_code == 200  # the same model, a short chat: fine
    _serves(d)


def test_a_corrupt_model_already_in_the_store_fails_alone(hostile):
    d = hostile
    r = httpx.post(d.url + "/api/pull", json={"model": "hf.co/test/Tiny-GGUF", "stream": False},
                   timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    # The blob is damaged on disk after the pull (a bad sector, a careless hand).
    blobs = [p for p in (d.cache / "blobs").iterdir() if p.stat().st_size > 100_000
             and p.stat().st_size < 1_000_000]  # fmt: skip
    assert len(blobs) == 1
    blob = blobs[0]
    blob.write_bytes(blob.read_bytes()[:-4096])
    r = httpx.post(d.url + "/v1/completions", timeout=120,
                   json={"model": "hf.co/test/Tiny-GGUF", "prompt": "x", "max_tokens": 2})  # fmt: skip
    assert r.status_code == 500
    message = r.json()["error"]["message"]
    assert "'hf.co/test/Tiny-GGUF'" in message and "not a valid GGUF model file" in message
    assert str(d.cache) not in message and "blobs" not in message  # the name, never the path
    assert blob.name in d.log()  # the operator's log has the file
    ollama = httpx.post(d.url + "/api/generate", timeout=120, json={
        "model": "hf.co/test/Tiny-GGUF", "prompt": "x", "stream": False})  # fmt: skip
    assert ollama.status_code == 500 and "hf.co/test/Tiny-GGUF" in ollama.json()["error"]
    _serves(d)
