"""Connection pressure: thousands of idle keep-alive connections, a slowloris of
half-sent requests, and a crowd over the connection cap. Health keeps answering,
requests keep being served, clients past the cap get a clean 503 in the API's shape,
and every connection is released afterwards (the daemon's open file descriptors come
back to where they were)."""

from __future__ import annotations

import json
import os
import socket
import time

import httpx

from tests.conftest import MODEL, Daemon, wait_for

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _request(port: int, method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def _read_response(s: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data[:100]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        body += s.recv(65536)
    return int(lines[0].split()[1]), headers, body


def _served(d: Daemon) -> None:
    assert httpx.get(d.url + "/health", timeout=30).status_code == 200
    r = httpx.post(d.url + "/v1/chat/completions", json=CHAT, timeout=120)
    assert r.status_code == 200, r.text


def _ttft(d: Daemon) -> float:
    started = time.perf_counter()
    with httpx.stream("POST", d.url + "/v1/chat/completions", json={**CHAT, "stream": True},
                      timeout=120) as r:  # fmt: skip
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                return time.perf_counter() - started
    raise AssertionError("no token")


def test_2000_idle_keep_alive_connections():
    with Daemon("--max-connections", "4000", "--keep-alive-timeout", "120", "--parallel", "2",
                "--context-size", "512").wait_healthy() as d:  # fmt: skip
        _served(d)
        baseline = _fds(d.proc.pid)
        before = _ttft(d)
        socks = []
        try:
            for _ in range(2000):
                s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
                s.sendall(_request(d.port, "GET", "/health"))
                status, headers, _ = _read_response(s)
                assert status == 200 and headers.get("connection") != "close"
                socks.append(s)  # open and idle
            assert _fds(d.proc.pid) >= baseline + 1990  # all of them held by the daemon
            _served(d)
            during = _ttft(d)
            print(f"TTFT with 2000 idle connections: {during * 1000:.0f} ms "
                  f"(before: {before * 1000:.0f} ms)")  # fmt: skip
            # Each idle connection still works.
            for s in socks[::200]:
                s.sendall(_request(d.port, "GET", "/health/live"))
                assert _read_response(s)[0] == 200
        finally:
            for s in socks:
                s.close()
        wait_for(lambda: _fds(d.proc.pid) <= baseline + 8, timeout=60)
        _served(d)


def test_a_slowloris_of_500_half_sent_requests_is_cut_off():
    with Daemon("--read-timeout", "3", "--parallel", "2",
                "--context-size", "512").wait_healthy() as d:  # fmt: skip
        _served(d)
        baseline = _fds(d.proc.pid)
        socks = []
        try:
            for i in range(500):
                s = socket.create_connection(("127.0.0.1", d.port), timeout=60)
                half = f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-{i}: "
                s.sendall(half.encode())  # and never the rest
                socks.append(s)
            _served(d)  # answered meanwhile
            cut = 0
            for s in socks:  # the daemon closes each one after --read-timeout
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                assert not data or data.startswith(b"HTTP/1.1 408"), data[:80]
                cut += 1
            assert cut == 500
        finally:
            for s in socks:
                s.close()
        wait_for(lambda: _fds(d.proc.pid) <= baseline + 8, timeout=60)
        _served(d)
        assert "Traceback" not in d.log()


def test_200_clients_over_the_connection_cap_get_a_clean_503():
    with Daemon("--max-connections", "50", "--keep-alive-timeout", "120", "--parallel", "2",
                "--context-size", "512").wait_healthy() as d:  # fmt: skip
        baseline = _fds(d.proc.pid)
        held, crowd = [], []
        try:
            for _ in range(50):  # the cap, held by idle keep-alive connections
                s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
                s.sendall(_request(d.port, "GET", "/health"))
                assert _read_response(s)[0] == 200
                held.append(s)
            body = json.dumps(CHAT).encode()
            for i in range(200):
                s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
                path = "/api/chat" if i % 2 else "/v1/chat/completions"
                s.sendall(_request(d.port, "POST", path, body))
                crowd.append((path, s))
            for path, s in crowd:
                status, headers, raw = _read_response(s)
                assert status == 503 and headers["retry-after"] == "1"
                err = json.loads(raw)["error"]
                if path.startswith("/api/"):
                    assert "connection limit" in err  # Ollama's shape
                else:
                    assert err["code"] == "unavailable" and "connection limit" in err["message"]
            # Health is answered past the cap (an orchestrator must not kill a busy daemon).
            r = httpx.get(d.url + "/health", timeout=30)
            assert r.status_code == 200
        finally:
            for s in held:
                s.close()
            for _, s in crowd:
                s.close()
        wait_for(lambda: _fds(d.proc.pid) <= baseline + 8, timeout=60)
        _served(d)
        assert "Traceback" not in d.log()
