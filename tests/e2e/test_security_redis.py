"""Two daemons sharing one rate-limit budget through a real redis-server."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import httpx
import pytest

from tests.conftest import Daemon, free_port, wait_for


@pytest.fixture
def redis_url():
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="mullama-redis-")
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", workdir,
         "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def up() -> bool:
        try:
            out = subprocess.run(
                ["redis-cli", "-p", str(port), "ping"], capture_output=True, timeout=5
            )
        except (FileNotFoundError, subprocess.TimeoutExpired):
            import socket

            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        return out.stdout.strip() == b"PONG"

    try:
        wait_for(up, timeout=30)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_two_instances_share_one_budget(redis_url):
    args = ("--rate-limit-storage", redis_url, "--rate-limit-requests", "4",
            "--parallel", "1", "--context-size", "256")  # fmt: skip
    a = Daemon(*args)
    b = Daemon(*args)
    try:
        a.wait_healthy()
        b.wait_healthy()
        codes = []
        for i in range(6):  # alternate between the instances: one budget of 4 in all
            d = (a, b)[i % 2]
            codes.append(httpx.get(d.url + "/v1/models", timeout=30).status_code)
        assert codes.count(200) == 4, codes
        assert codes[4:] == [429, 429], codes
        r = httpx.get(a.url + "/v1/models", timeout=30)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    finally:
        a.stop()
        b.stop()


def test_memory_storage_is_per_instance():
    args = ("--rate-limit-requests", "2", "--parallel", "1", "--context-size", "256")
    a = Daemon(*args).wait_healthy()
    try:
        codes = [httpx.get(a.url + "/v1/models", timeout=30).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
    finally:
        a.stop()
