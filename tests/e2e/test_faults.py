"""Faults under load: processes dying or stopping at the worst moment, Redis going away
and coming back, a full disk, signals during a load, a forced stop, and 200 clients
leaving at once. What must hold each time: only the requests the fault touched fail,
each with its documented error; the daemon keeps answering; nothing is left
half-written or held (slots, KV cells, files, processes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import pytest

from mullama.models.registry import embedded_model_path
from tests.conftest import MODEL, Daemon, free_port, wait_for
from tests.hubstub import HubServer, tiny_gguf

LONG = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 1500, "ignore_eos": True, "stream": True}  # fmt: skip


def _stream(url: str, out: list, body: dict = LONG) -> None:
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
            events = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
            out.append((r.status_code, events))
    except httpx.HTTPError as exc:
        out.append((None, [repr(exc)]))


def _streams(d: Daemon, n: int) -> tuple[list, list[threading.Thread]]:
    out: list = []
    threads = [threading.Thread(target=_stream, args=(d.url, out)) for _ in range(n)]
    for t in threads:
        t.start()
    return out, threads


def _last_error(events: list[str]) -> dict:
    """The error object of an SSE stream cut by an error (the event before [DONE])."""
    assert events and events[-1] == "[DONE]", events[-3:]
    return json.loads(events[-2])["error"]


def _chat(d: Daemon, **extra) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(d.url + "/v1/chat/completions", json={**body, **extra}, timeout=120)


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"  # reaped soon
    except FileNotFoundError:
        return True


def test_kill_9_of_a_worker_fails_only_its_streams_and_a_new_worker_serves():
    """8 streams: 6 on one model, 2 on another (the same file under a second name, in its
    own worker). Killing the first worker fails its 6 streams, each with engine_crashed;
    the other model's 2 streams finish normally."""
    path = str(embedded_model_path())
    with Daemon("--model", f"{MODEL}={path}", "--model", f"other={path}", "--parallel", "6",
                "--context-size", "2048").wait_healthy() as d:  # fmt: skip
        out: list = []
        other: list = []
        short = {**LONG, "model": "other", "max_tokens": 300}
        threads = [threading.Thread(target=_stream, args=(d.url, out)) for _ in range(6)]
        threads += [threading.Thread(target=_stream, args=(d.url, other, short))
                    for _ in range(2)]  # fmt: skip
        for t in threads:
            t.start()
        wait_for(lambda: d.model_status()["active_sequences"] == 6
                 and d.model_status("other")["active_sequences"] == 2, timeout=60)  # fmt: skip
        pid = d.model_status()["pid"]
        os.kill(pid, signal.SIGKILL)
        for t in threads:
            t.join(120)
        assert len(out) == 6 and len(other) == 2
        for status, events in out:
            assert status == 200
            assert _last_error(events)["code"] == "engine_crashed"
        for status, events in other:  # the other model's streams: untouched
            assert status == 200 and events[-1] == "[DONE]"
            assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        assert httpx.get(d.url + "/health", timeout=10).status_code == 200
        r = _chat(d)
        assert r.status_code == 200
        assert d.model_status()["pid"] not in (None, pid)
        assert "Traceback" not in d.log()


def test_a_stopped_worker_times_requests_out_and_health_says_degraded():
    """A stopped engine makes no progress: its streams end after --stream-idle-timeout."""
    with Daemon("--parallel", "2", "--context-size", "2048",
                "--stream-idle-timeout", "4").wait_healthy() as d:  # fmt: skip
        out, threads = _streams(d, 2)
        wait_for(lambda: d.model_status()["active_sequences"] == 2, timeout=60)
        pid = d.model_status()["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            for t in threads:
                t.join(60)
            for status, events in out:
                error = _last_error(events)
                assert status == 200 and error["code"] == "request_timeout"
                assert "no progress for 4 s" in error["message"]

            def degraded():
                h = httpx.get(d.url + "/health", timeout=5)
                assert h.status_code == 200  # the daemon answers meanwhile
                body = h.json()
                return body["status"] == "degraded" and body["dependencies"][
                    f"model:{MODEL}"]["status"] == "down"  # fmt: skip

            wait_for(degraded, timeout=30)
            assert httpx.get(d.url + "/v1/models", timeout=5).status_code == 200
        finally:
            os.kill(pid, signal.SIGCONT)

        def healthy():
            body = httpx.get(d.url + "/health", timeout=5).json()
            return (
                body["status"] == "ok" and body["dependencies"][f"model:{MODEL}"]["status"] == "ok"
            )

        wait_for(healthy, timeout=30)
        assert _chat(d).status_code == 200
        assert d.model_status()["pid"] == pid  # the same worker, resumed


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="mullama-redis-")
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir,
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(up, timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def test_redis_stopped_and_restarted_under_shared_rate_limits():
    redis = Redis()
    redis.start()
    limits = ("--rate-limit-storage", redis.url, "--rate-limit-requests", "10000")
    try:
        with Daemon(*limits, "--parallel", "1", "--context-size", "512").wait_healthy() as opened, \
                Daemon(*limits, "--rate-limit-fail", "closed", "--parallel", "1",
                       "--context-size", "512").wait_healthy() as closed:  # fmt: skip
            for d in (opened, closed):
                r = httpx.get(d.url + "/v1/models", timeout=10)
                assert r.status_code == 200 and "x-ratelimit-remaining-requests" in r.headers
            redis.stop()
            # fail open: served, unlimited; fail closed: a clean 503 in the API's shape
            r = httpx.get(opened.url + "/v1/models", timeout=10)
            assert r.status_code == 200 and "x-ratelimit-remaining-requests" not in r.headers
            assert _chat(opened).status_code == 200
            r = httpx.get(closed.url + "/v1/models", timeout=10)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "unavailable"
            r = httpx.post(closed.url + "/api/chat", timeout=10, json={"model": MODEL})
            assert r.status_code == 503 and "rate limits cannot be checked" in r.json()["error"]
            wait_for(lambda: httpx.get(opened.url + "/health").json()["dependencies"]["redis"][
                "status"] == "down", timeout=30)  # fmt: skip
            redis.start()  # back on the same port: both use it again by themselves
            for d in (opened, closed):
                wait_for(lambda d=d: "x-ratelimit-remaining-requests" in httpx.get(
                    d.url + "/v1/models", timeout=10).headers, timeout=60)  # fmt: skip
            assert _chat(closed).status_code == 200
            for d in (opened, closed):
                assert d.proc.poll() is None
                assert "Traceback" not in d.log()
                assert d.log().count("rate-limit storage failed") <= 3  # not once per request
    finally:
        redis.stop()
        shutil.rmtree(redis.dir, ignore_errors=True)


@pytest.fixture
def small_disk():
    """A 1 MiB tmpfs: a disk that fills up."""
    path = Path(tempfile.mkdtemp(prefix="mullama-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_full_disk_while_pulling_and_writing_manifests_leaves_the_store_consistent(
    small_disk, tmp_path
):
    hub = HubServer()
    hub.hub.add("test/Big-GGUF", "big-Q4_K_M.gguf", tiny_gguf(tmp_path / "big.gguf", 400_000))
    hub.hub.add("test/Small-GGUF", "small-Q4_K_M.gguf", tiny_gguf(tmp_path / "small.gguf", 4096))
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test"}
    try:
        with Daemon("--cache-dir", str(small_disk), "--session-disk", "0", "--parallel", "1",
                    "--context-size", "512", env=env).wait_healthy() as d:  # fmt: skip
            r = httpx.post(d.url + "/api/pull", timeout=120,
                           json={"model": "hf.co/test/Big-GGUF", "stream": False})  # fmt: skip
            assert r.status_code == 507, r.text
            assert "hf.co/test/Big-GGUF" in r.json()["error"]
            assert str(small_disk) not in r.json()["error"]
            left = [f for f in _files(small_disk) if not f.startswith("locks/")]
            assert left == [], left  # no partial blob, no manifest
            # A model that fits, then the disk filled up by something else.
            r = httpx.post(d.url + "/api/pull", timeout=120,
                           json={"model": "hf.co/test/Small-GGUF", "stream": False})  # fmt: skip
            assert r.status_code == 200, r.text
            (small_disk / "filler").write_bytes(b"")
            with (small_disk / "filler").open("ab") as f, pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            before = _files(small_disk)
            r = httpx.post(d.url + "/api/copy", timeout=60, json={
                "source": "hf.co/test/Small-GGUF", "destination": "a-copy"})  # fmt: skip
            assert r.status_code == 507, r.text
            r = httpx.post(d.url + "/api/create", timeout=60, json={
                "model": "custom", "from": "hf.co/test/Small-GGUF", "system": "x" * 4000,
                "stream": False})  # fmt: skip
            assert r.status_code == 507, r.text
            assert _files(small_disk) == before  # nothing half-written
            names = {m["name"] for m in httpx.get(d.url + "/api/tags").json()["models"]}
            assert "hf.co/test/Small-GGUF" in names and not {"a-copy", "custom"} & names
            (small_disk / "filler").unlink()
            r = httpx.post(d.url + "/api/copy", timeout=60, json={
                "source": "hf.co/test/Small-GGUF", "destination": "a-copy"})  # fmt: skip
            assert r.status_code == 200
            assert _chat(d).status_code == 200
    finally:
        hub.close()


def test_sessions_on_a_full_disk_are_not_half_written(small_disk):
    (small_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))
    d = Daemon("--cache-dir", str(small_disk), "--session-disk", "64MiB", "--parallel", "1",
               "--context-size", "1024").wait_healthy()  # fmt: skip
    try:
        story = {**LONG, "stream": False, "max_tokens": 300}
        r = httpx.post(d.url + "/v1/chat/completions", json=story, timeout=120)
        assert r.status_code == 200
    finally:
        assert d.stop() == 0
    log = d.log()
    assert "sessions not saved" in log, log[-2000:]
    kvs = [f for f in _files(small_disk) if f.startswith("sessions/")]
    assert kvs == [], kvs  # no partial session file


def test_sigterm_during_a_model_load_exits_cleanly_and_leaves_no_worker():
    d = Daemon("--parallel", "1", "--context-size", "512")
    children = wait_for(lambda: d.proc.poll() is None and _children(d.proc.pid), timeout=60,
                        interval=0.01)  # fmt: skip
    d.proc.send_signal(signal.SIGTERM)  # the worker is still starting: loading its model
    assert d.proc.wait(60) == 0, d.log()
    d.stop()
    for pid in children:
        wait_for(lambda pid=pid: _gone(pid), timeout=30)
    assert "Traceback" not in d.log()


def test_daemon_stop_force_ends_streams_and_the_process():
    with Daemon("--parallel", "2", "--context-size", "2048").wait_healthy() as d:
        out, threads = _streams(d, 2)
        wait_for(lambda: d.model_status()["active_sequences"] == 2, timeout=60)
        worker = d.model_status()["pid"]
        stop = subprocess.run(
            [sys.executable, "-m", "mullama", "daemon", "stop", "--force",
             "--socket", f"unix://{d.socket}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert d.proc.wait(60) is not None
        for t in threads:
            t.join(60)
        assert len(out) == 2  # both streams ended (cut, or with an error event)
        wait_for(lambda: _gone(worker), timeout=30)


def test_200_clients_leaving_at_once_free_every_slot_and_the_kv_cache():
    with Daemon("--parallel", "8", "--context-size", "1024",
                "--max-queue", "256").wait_healthy() as d:  # fmt: skip
        body = json.dumps({**LONG, "max_tokens": 600}).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
        socks = []
        try:
            for _ in range(200):
                s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
                s.sendall(head.encode() + body)
                socks.append(s)

            def all_in() -> bool:
                m = d.model_status()
                return m["active_sequences"] == 8 and m["queued_sequences"] == 192

            wait_for(all_in, timeout=120)
        finally:
            for s in socks:  # all at once
                s.close()

        def freed() -> bool:
            m = d.model_status()
            return m["active_sequences"] == 0 and m["queued_sequences"] == 0 and all(
                slot["state"] == "idle" for slot in m["slots"])  # fmt: skip

        wait_for(freed, timeout=120)
        m = d.model_status()
        # What stays in the KV cache is only the idle slots' kept histories (for reuse).
        assert m["kv_cache_used"] == sum(slot["tokens"] for slot in m["slots"])
        assert httpx.get(d.url + "/api/system/status").json()["stats"]["active_requests"] == 0
        assert _chat(d).status_code == 200
        assert "Traceback" not in d.log()
