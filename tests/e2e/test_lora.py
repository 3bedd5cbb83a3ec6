"""LoRA adapters through the daemon: one file served as the base model, with its adapter
at scale 0 (--model-opt NAME:lora=PATH:0) and at scale 1 (--lora, the default model's);
greedy answers, the response cache and what /api/ps and /v1/models show; a custom model
with the adapter (the CLI's YAML, /api/create's blobs) answers as the --lora model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mullama.models.registry import embedded_model_path
from mullama.models.store import ModelStore
from tests.conftest import Daemon

ROOT = Path(__file__).resolve().parents[2]
PATH = str(embedded_model_path())
PROMPT = "The capital of France is"


def _make_lora(out: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_lora", ROOT / "benchmarks" / "synthetic" / "make_lora.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_lora(embedded_model_path(), out)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_lora(tmp_path_factory.mktemp("lora") / "noise-lora.gguf")


@pytest.fixture(scope="module")
def lora_daemon(adapter: Path) -> Iterator[Daemon]:
    d = Daemon(
        "--model", f"tuned={PATH}", "--lora", str(adapter),
        "--model", f"base={PATH}",
        "--model", f"zero={PATH}", "--model-opt", f"zero:lora={adapter}:0",
        "--parallel", "2", "--context-size", "512", "--response-cache",
        "--max-loaded-models", "5",  # the three pinned and the custom models
    ).wait_healthy(timeout=300)  # fmt: skip
    yield d
    d.stop()


def _greedy(d: Daemon, model: str, fresh: bool = False) -> str:
    headers = {"Cache-Control": "no-cache"} if fresh else {}
    body = {"model": model, "prompt": PROMPT, "max_tokens": 16, "temperature": 0}
    r = httpx.post(d.url + "/v1/completions", json=body, headers=headers, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_scale_zero_is_the_base_and_a_scale_changes_it(lora_daemon: Daemon) -> None:
    base = _greedy(lora_daemon, "base")  # cached first: the others must not get it
    assert _greedy(lora_daemon, "zero") == base
    tuned = _greedy(lora_daemon, "tuned")
    assert tuned != base
    assert _greedy(lora_daemon, "tuned", fresh=True) == tuned  # computed again: the same


def test_ps_and_models_show_the_adapters(lora_daemon: Daemon) -> None:
    for name in ("tuned", "zero", "base"):
        _greedy(lora_daemon, name)
    ps = {m["name"]: m for m in httpx.get(lora_daemon.url + "/api/ps").json()["models"]}
    assert ps["tuned"]["adapters"] == [{"name": "noise-lora", "scale": 1.0}]
    assert ps["zero"]["adapters"] == [{"name": "noise-lora", "scale": 0.0}]
    assert "adapters" not in ps["base"]
    cards = {m["id"]: m for m in httpx.get(lora_daemon.url + "/v1/models").json()["data"]}
    assert cards["tuned"]["adapters"] == [{"name": "noise-lora", "scale": 1.0}]
    assert "adapters" not in cards["base"]


def test_custom_model_with_the_adapter(lora_daemon: Daemon, adapter: Path, tmp_path: Path):
    definition = tmp_path / "pirate.yaml"
    definition.write_text(f"from: smollm2:135m\nadapters:\n  - {adapter}\n")
    store = str(lora_daemon.store)
    subprocess.run(
        [sys.executable, "-m", "mullama", "create", "--cache-dir", store, "-f",
         str(definition), "pirate"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    tuned = _greedy(lora_daemon, "tuned")
    assert _greedy(lora_daemon, "pirate") == tuned
    digest = ModelStore(store).require("pirate").adapters[0].digest
    body = {"model": "parrot", "from": "smollm2:135m", "adapters": {"a.gguf": digest}}
    r = httpx.post(lora_daemon.url + "/api/create", json={**body, "stream": False}, timeout=60)
    assert r.status_code == 200, r.text
    assert _greedy(lora_daemon, "parrot") == tuned
    r = httpx.post(
        lora_daemon.url + "/api/create",
        json={**body, "model": "x", "adapters": {"a.gguf": "sha256:" + "0" * 64}},
        timeout=60,
    )
    assert r.status_code == 404 and "not in the store" in r.text
