"""Graceful shutdown, request timeouts and the control socket, on the real daemon."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx

from tests.conftest import MODEL, Daemon, free_port, wait_for

MSG = [{"role": "user", "content": "Count to a thousand."}]


def _chat(max_tokens: int, stream: bool = True) -> dict:
    return {"model": MODEL, "messages": MSG, "max_tokens": max_tokens, "stream": stream,
            "ignore_eos": True, "temperature": 0}  # fmt: skip


class Stream(threading.Thread):
    """A streaming request in a thread; ``first`` is set once data arrives."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.first = threading.Event()
        self.lines: list[str] = []
        self.status: int | None = None
        self.start()

    def run(self) -> None:
        with httpx.stream("POST", self.url, json=self.body, timeout=300) as r:
            self.status = r.status_code
            for line in r.iter_lines():
                if line:
                    self.lines.append(line)
                    self.first.set()
        self.first.set()


def _sse_events(lines: list[str]) -> list:
    return [
        line[6:] if line == "data: [DONE]" else json.loads(line[6:])
        for line in lines
        if line.startswith("data: ")
    ]


def _try_get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=10)
    except httpx.HTTPError:
        return None


def test_sigterm_drains_four_streams():
    # A generous drain window: the streams must finish on a loaded machine too.
    with Daemon(
        "--parallel", "4", "--context-size", "1024", "--shutdown-timeout", "280"
    ).wait_healthy() as d:
        streams = [Stream(d.url + "/v1/chat/completions", _chat(300)) for _ in range(4)]
        for s in streams:
            assert s.first.wait(120)
        d.proc.send_signal(signal.SIGTERM)
        refused = wait_for(
            lambda: (r := _try_get(d.url + "/v1/models")) is not None and r.status_code == 503 and r
        )
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "unavailable"
        assert _try_get(d.url + "/health/ready").status_code == 503
        for s in streams:
            s.join(300)
            events = _sse_events(s.lines)
            assert s.status == 200
            assert events[-1] == "[DONE]"
            assert not any(isinstance(e, dict) and "error" in e for e in events), events[-3:]
            assert events[-2]["choices"][0]["finish_reason"] == "length"
        assert d.proc.wait(120) == 0, d.log()
        assert not d.socket.exists()
        assert not d.socket.with_suffix(".pid").exists()


def test_shutdown_timeout_aborts_streams_with_an_error_event():
    with Daemon(
        "--shutdown-timeout", "1", "--parallel", "2", "--context-size", "2048"
    ).wait_healthy() as d:
        sse = Stream(d.url + "/v1/chat/completions", _chat(1900))
        ndjson = Stream(
            d.url + "/api/chat",
            {
                "model": MODEL,
                "messages": MSG,
                "options": {"num_predict": 1900, "ignore_eos": True},
                "stream": True,
            },
        )
        assert sse.first.wait(120) and ndjson.first.wait(120)
        d.proc.send_signal(signal.SIGTERM)
        sse.join(120)
        ndjson.join(120)
        events = _sse_events(sse.lines)
        assert events[-1] == "[DONE]"
        assert "shutting down" in events[-2]["error"]["message"]
        last = json.loads(ndjson.lines[-1])
        assert "shutting down" in last["error"]
        assert d.proc.wait(120) == 0, d.log()
        assert "aborted 2 request(s)" in d.log()


def test_second_signal_stops_at_once():
    with Daemon(
        "--shutdown-timeout", "600", "--parallel", "1", "--context-size", "2048"
    ).wait_healthy() as d:
        s = Stream(d.url + "/v1/chat/completions", _chat(1900))
        assert s.first.wait(120)
        d.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in d.log())
        d.proc.send_signal(signal.SIGINT)
        assert d.proc.wait(60) == 0, d.log()
        s.join(60)
        assert not any("finish_reason" in line and '"length"' in line for line in s.lines)


def test_request_timeout_cancels_the_generation():
    """--request-timeout bounds a non-streamed request; a stream is bound by
    --stream-timeout when set (and by the idle timeout: test_long_answers.py)."""
    d = Daemon("--request-timeout", "1", "--stream-timeout", "1", "--parallel", "2",
               "--context-size", "2048")  # fmt: skip
    d.wait_healthy()
    try:
        s = Stream(d.url + "/v1/chat/completions", _chat(1900))
        s.join(120)
        events = _sse_events(s.lines)
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "request_timeout"
        assert "--stream-timeout" in events[-2]["error"]["message"]
        r = httpx.post(d.url + "/v1/chat/completions", json=_chat(1900, stream=False), timeout=120)
        assert r.status_code == 504
        assert r.json()["error"]["type"] == "timeout_error"
        r = httpx.post(
            d.url + "/api/generate",
            json={
                "model": MODEL,
                "prompt": "hi",
                "options": {"num_predict": 1900, "ignore_eos": True},
            },
            timeout=120,
        )
        assert "longer than 1 s" in json.loads(r.text.splitlines()[-1])["error"]
        # The engine stopped the sequences (nothing left generating).
        wait_for(lambda: d.model_status()["active_sequences"] == 0)
    finally:
        d.stop()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mullama", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_daemon_stop_and_status_over_the_control_socket():
    sock = Path(tempfile.mkdtemp(prefix="mullama-ctl-")) / "mullama.sock"
    with Daemon(
        "--socket", f"ipc://{sock}", "--parallel", "1", "--context-size", "256"
    ).wait_healthy() as d:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert int(sock.with_suffix(".pid").read_text()) == d.proc.pid
        status = _cli("status", "--socket", f"unix://{sock}")
        assert status.returncode == 0, status.stderr
        assert f"pid {d.proc.pid}" in status.stdout and "ready" in status.stdout
        info = json.loads(_cli("status", "--json", "--socket", str(sock)).stdout)
        assert info["models"] == [MODEL]
        # A second daemon on the same socket refuses to start.
        second = subprocess.run(
            [sys.executable, "-m", "mullama", "serve", "--socket", str(sock),
             "--http-port", str(free_port())],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 1
        assert "already running" in second.stderr and str(d.proc.pid) in second.stderr
        stop = _cli("stop", "--socket", str(sock), "--timeout", "10")
        assert stop.returncode == 0, stop.stderr
        assert "stopped" in stop.stdout
        assert d.proc.wait(60) == 0
        assert not sock.exists() and not sock.with_suffix(".pid").exists()
        gone = _cli("status", "--socket", str(sock))
        assert gone.returncode == 3 and "no daemon is running" in gone.stderr
        assert _cli("stop", "--socket", str(sock)).returncode == 3


def test_stale_socket_is_replaced():
    sock = Path(tempfile.mkdtemp(prefix="mullama-ctl-")) / "mullama.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(sock))  # a crashed daemon's socket file: nobody accepts on it
    leftover.close()
    sock.with_suffix(".pid").write_text("999999\n")
    assert sock.exists()
    d = Daemon("--socket", str(sock), "--parallel", "1", "--context-size", "256")
    try:
        d.wait_healthy()
        assert "stale control socket" in d.log()
        assert _cli("status", "--socket", str(sock)).returncode == 0
        assert int(sock.with_suffix(".pid").read_text()) == d.proc.pid
    finally:
        assert d.stop() == 0
    assert not sock.exists()


def test_control_socket_needs_no_key_but_tcp_does():
    sock = Path(tempfile.mkdtemp(prefix="mullama-ctl-")) / "mullama.sock"
    d = Daemon(
        "--socket", str(sock), "--parallel", "1", "--context-size", "256",
        env={"MULLAMA_API_KEY": "k-" + "9" * 30},
    ).wait_healthy()  # fmt: skip
    try:
        assert httpx.get(d.url + "/v1/models").status_code == 401
        assert httpx.post(d.url + "/api/daemon/stop", json={}).status_code == 401
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://localhost") as c:
            assert c.get("/v1/models").status_code == 200
        assert os.stat(sock).st_uid == os.getuid()
    finally:
        d.stop()
