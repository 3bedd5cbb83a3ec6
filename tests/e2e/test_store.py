"""The model store end to end: the `mullama` CLI and the daemon against a stand-in Hub on
127.0.0.1 serving the real SmolLM2 GGUF."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from mullama.models.registry import embedded_model_path
from tests.conftest import Daemon, wait_for
from tests.hubstub import HubServer, tiny_gguf

REPO = "test/SmolLM2-GGUF"
NAME = f"hf.co/{REPO}:Q4_1"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    server = HubServer()
    server.hub.add(REPO, "SmolLM2-135M-Instruct-Q4_1.gguf", embedded_model_path())
    tiny = tiny_gguf(tmp_path_factory.mktemp("hub") / "tiny.gguf", 200_000)
    server.hub.add("test/Tiny-GGUF", "tiny-Q4_K_M.gguf", tiny)
    yield server
    server.close()


def env_for(hub: HubServer, cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "MULLAMA_CACHE_DIR": str(cache),
        "HF_TOKEN": "hf_test_token",
    }


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "mullama", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mullama {' '.join(args)} failed: {proc.stderr}")
    return proc


def listed(env: dict[str, str]) -> list[str]:
    lines = cli(env, "list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "QUANT", "MODIFIED"]
    return [line.split()[0] for line in lines[1:]]


def test_pull_create_backup_restore_and_serve(hub, tmp_path):
    cache = tmp_path / "cache"
    env = env_for(hub, cache)
    hub.hub.requests.clear()
    hub.hub.faults.delay = 1.0  # two pulls overlap: the second waits for the first's lock
    pulls = [
        subprocess.Popen(
            [sys.executable, "-m", "mullama", "pull", NAME],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in pulls]
    hub.hub.faults.delay = 0.0
    assert [p.returncode for p in pulls] == [0, 0], outs
    assert len(hub.hub.gets("SmolLM2-135M-Instruct-Q4_1.gguf")) == 1
    assert "pulling manifest" in outs[0][0] and "success" in outs[0][0]
    assert listed(env) == [NAME]
    shown = json.loads(cli(env, "show", NAME, "--json").stdout)
    assert shown["architecture"] == "llama" and shown["quantization"] == "Q4_1"
    assert shown["context_length"] == 8192 and "im_start" in shown["chat_template"]

    # a custom model: Go template + system prompt + default parameters
    spec = tmp_path / "pirate.yaml"
    spec.write_text(
        f"from: {NAME}\n"
        "system: You are a pirate. Answer like one.\n"
        'template: "SYSTEM: {{ .System }}\\nUSER: {{ .Prompt }}\\nASSISTANT:"\n'
        "parameters:\n  num_predict: 5\n  temperature: 0\n"
    )
    cli(env, "create", "pirate", "-f", str(spec))
    cli(env, "cp", NAME, "smol-copy")
    cli(env, "rm", NAME)  # the blob stays: smol-copy and pirate use it
    assert sorted(listed(env)) == ["pirate", "smol-copy"]
    assert len(list((cache / "blobs").iterdir())) == 1

    backup = tmp_path / "store.tar.gz"
    cli(env, "backup", str(backup), "--models")
    shutil.rmtree(cache)
    assert listed(env) == []
    cli(env, "restore", str(backup))
    again = cli(env, "restore", str(backup))  # identical content: nothing to overwrite
    assert again.returncode == 0
    assert sorted(listed(env)) == ["pirate", "smol-copy"]

    d = Daemon(
        "--model",
        "smol-copy",
        "--model",
        "pirate",
        "--parallel",
        "2",
        "--context-size",
        "1024",
        env=env,
    ).wait_healthy()
    try:
        client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="pirate", messages=[{"role": "user", "content": "Hi"}]
        )
        assert reply.usage.completion_tokens <= 5  # num_predict from the definition
        expected = client.completions.create(
            model="smol-copy",
            prompt="SYSTEM: You are a pirate. Answer like one.\nUSER: Hi\nASSISTANT:",
            max_tokens=1,
        )
        # the system prompt and the template were both applied, token for token
        assert reply.usage.prompt_tokens == expected.usage.prompt_tokens
        own_system = client.chat.completions.create(
            model="pirate",
            messages=[
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "Hi"},
            ],
        )
        assert own_system.usage.prompt_tokens < reply.usage.prompt_tokens
        plain = client.chat.completions.create(
            model="smol-copy", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert plain.choices[0].message.content
        ids = {m.id for m in client.models.list()}
        assert {"pirate", "smol-copy"} <= ids
        shown = httpx.post(d.url + "/api/show", json={"model": "pirate"}).json()
        assert shown["system"] == "You are a pirate. Answer like one."
        assert "num_predict" in shown["parameters"]
    finally:
        d.stop()


def test_wrong_checksum_and_full_disk_leave_nothing(hub, tmp_path):
    cache = tmp_path / "cache"
    env = env_for(hub, cache)
    hub.hub.faults.wrong_sha = True
    try:
        bad = cli(env, "pull", NAME, check=False)
    finally:
        hub.hub.faults.wrong_sha = False
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "sha256 mismatch" in bad.stderr
    assert listed(env) == []

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(small)], check=True)
    try:
        full = cli(env_for(hub, small / "cache"), "pull", NAME, check=False)
        assert full.returncode == 1 and "no space" in full.stderr
        assert listed(env_for(hub, small / "cache")) == []
        assert not list((small / "cache" / "partial").glob("*"))
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.parametrize(
    "name", ["../x", "/etc/passwd", "a\\b", "%2e%2e/x", "bad\x01name", "x/../../y"]
)
def test_cli_refuses_bad_names(hub, tmp_path, name):
    env = env_for(hub, tmp_path / "cache")
    for args in (["pull", name], ["rm", name], ["cp", "smollm2:135m", name], ["show", name]):
        proc = cli(env, *args, check=False)
        assert proc.returncode == 1, args
        assert proc.stderr.startswith("mullama: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "cache").exists()


def test_a_corrupt_gguf_given_with_model_stops_the_start(tmp_path):
    """A truncated or bit-flipped GGUF given with --model fails the GGUF check: the start
    stops at once with a non-zero exit and a message naming the file (as llama-server
    does), so systemd and Kubernetes see it; no worker is started. (A corrupt model
    already in the store fails that model alone: tests/e2e/test_hostile_models.py.)"""
    good = tiny_gguf(tmp_path / "good.gguf", 4096).read_bytes()
    (tmp_path / "truncated.gguf").write_bytes(good[:-64])
    flipped = bytearray(good)
    flipped[30] ^= 0x7F
    (tmp_path / "flipped.gguf").write_bytes(bytes(flipped))
    for name in ("truncated", "flipped"):
        path = tmp_path / f"{name}.gguf"
        proc = subprocess.run(
            [sys.executable, "-m", "mullama", "serve", "--socket", "none", "--http-port", "0",
             "--model", f"{name}={path}", "--model", "smollm2:135m"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert str(path) in proc.stderr and "not a valid GGUF model file" in proc.stderr
        assert f"--model {name}=" in proc.stderr
        assert "serving models" not in proc.stderr and "worker" not in proc.stderr.lower()
    for name in ("truncated.gguf", "flipped.gguf"):
        show = subprocess.run(
            [sys.executable, "-m", "mullama", "show", str(tmp_path / name)],
            capture_output=True,
            text=True,
        )
        assert show.returncode == 1 and name in show.stderr


def test_ollama_client_pull_copy_delete_create(hub, tmp_path):
    cache = tmp_path / "cache"
    d = Daemon("--parallel", "2", "--context-size", "1024", env=env_for(hub, cache)).wait_healthy()
    try:
        client = ollama.Client(host=d.url, timeout=120)
        events = list(client.pull("hf.co/test/Tiny-GGUF", stream=True))
        statuses = [e.status for e in events]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        assert "verifying sha256 digest" in statuses
        files = [e for e in events if e.digest]
        assert files and files[-1].completed == files[-1].total > 800_000
        assert files[-1].digest.startswith("sha256:")
        assert client.pull("hf.co/test/Tiny-GGUF").status == "success"  # stream=False
        assert client.copy("hf.co/test/Tiny-GGUF", "tiny-copy").status == "success"
        names = {m.model for m in client.list().models}
        assert {"smollm2:135m", "hf.co/test/Tiny-GGUF", "tiny-copy"} <= names
        created = list(
            client.create(
                model="tiny-custom",
                from_="tiny-copy",
                system="Be nice.",
                parameters={"temperature": 0.3, "stop": ["END"]},
                stream=True,
            )
        )
        assert created[-1].status == "success"
        assert client.delete("hf.co/test/Tiny-GGUF").status == "success"
        names = {m.model for m in client.list().models}
        assert "hf.co/test/Tiny-GGUF" not in names and {"tiny-copy", "tiny-custom"} <= names
        models = httpx.get(d.url + "/v1/models").json()["data"]
        assert {"tiny-copy", "tiny-custom"} <= {m["id"] for m in models}
        shown = httpx.post(d.url + "/api/show", json={"model": "tiny-custom"}).json()
        assert shown["system"] == "Be nice." and "temperature" in shown["parameters"]
        with pytest.raises(ollama.ResponseError) as err:
            client.pull("../../etc/passwd")
        assert err.value.status_code == 400
        with pytest.raises(ollama.ResponseError) as err:
            client.pull("no-such-model-anywhere")
        assert err.value.status_code == 404 and "unknown model" in err.value.error
        with pytest.raises(ollama.ResponseError) as err:
            client.delete("hf.co/test/Tiny-GGUF")
        assert err.value.status_code == 404
        r = httpx.post(d.url + "/api/create", json={"model": "x", "from": "/etc/passwd.gguf"})
        assert r.status_code == 400 and "error" in r.json()
    finally:
        d.stop()


def test_pulled_model_is_served_on_demand(hub, tmp_path):
    """A model pulled through the API is loaded on its first request, no --model needed,
    and unloads after its keep-alive."""
    cache = tmp_path / "cache"
    d = Daemon(
        "--parallel",
        "2",
        "--context-size",
        "1024",
        "--keep-alive",
        "1s",
        env=env_for(hub, cache),
    ).wait_healthy()
    try:
        client = ollama.Client(host=d.url, timeout=120)
        assert client.pull(NAME).status == "success"
        loaded = {m.model for m in client.ps().models}
        assert NAME not in loaded
        # Looking a model up changes nothing: it is not served until a request uses it.
        assert httpx.get(f"{d.url}/v1/models/{NAME}").json()["id"] == NAME
        client.show(NAME)
        served = {m["name"] for m in httpx.get(f"{d.url}/api/models").json()["models"]}
        assert NAME not in served
        digest = {m.model: m.digest for m in client.list().models}[NAME]
        reply = client.chat(
            model=NAME,
            messages=[{"role": "user", "content": "Hi"}],
            options={"num_predict": 5, "temperature": 0},
            stream=False,
        )
        assert reply.message.content and reply.load_duration > 0
        # One digest: the same once served as when it was only stored.
        assert {m.model: m.digest for m in client.list().models}[NAME] == digest
        assert {m.model: m.digest for m in client.ps().models}[NAME] == digest
        oai = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
        out = oai.completions.create(model=NAME, prompt="Hello", max_tokens=3)
        assert out.choices[0].text
        oai.close()
        deadline = time.monotonic() + 60
        while NAME in {m.model for m in client.ps().models}:
            assert time.monotonic() < deadline, "keep-alive never unloaded it"
            time.sleep(0.2)
    finally:
        d.stop()


def test_a_fresh_machine_gets_its_store_folder_at_start(tmp_path):
    """`mullama serve` where ~/.mullama does not exist yet (the quick start's first run):
    the store folder is made at start, so /health's disk probe finds it (the store was
    reported ``down`` and the daemon ``degraded`` until the first pull)."""
    home = tmp_path / "home"
    home.mkdir()
    args = ("--cache-dir", "~/.mullama/models", "--parallel", "1", "--context-size", "256")
    with Daemon(*args, env={"HOME": str(home)}).wait_healthy() as d:
        assert (home / ".mullama" / "models").is_dir()

        def store() -> dict:
            return httpx.get(d.url + "/health", timeout=10).json()["dependencies"]["model_store"]

        probed = wait_for(lambda: (s := store())["status"] != "unknown" and s)
        assert probed["status"] != "down" and "bytes free" in probed["detail"]


def test_the_suites_daemons_do_not_see_the_users_store(tmp_path):
    """A model in the user's own store (~/.mullama/models) is not listed by a test's
    daemon: each Daemon of tests/conftest.py has a temporary store of its own."""
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home)}
    env.pop("MULLAMA_CACHE_DIR", None)  # the user's default store, in this stand-in home
    cli(env, "cp", "smollm2:135m", "users-own:latest")
    assert (home / ".mullama" / "models" / "manifests").is_dir()
    with Daemon("--parallel", "1", "--context-size", "256", env={"HOME": str(home)}) as d:
        d.wait_healthy()
        names = [m["name"] for m in httpx.get(d.url + "/api/tags", timeout=10).json()["models"]]
        assert "users-own:latest" not in names and names
