"""SIGHUP (a closed terminal, logrotate's postrotate) reopens the log file and reloads
the API keys; the daemon and its workers keep serving."""

from __future__ import annotations

import os
import signal

import httpx

from tests.conftest import Daemon, wait_for

OLD = "sk-old-" + "1" * 24
NEW = "sk-new-" + "2" * 24


def _models(d: Daemon, key: str) -> int:
    return httpx.get(d.url + "/v1/models", headers={"Authorization": f"Bearer {key}"},
                     timeout=10).status_code  # fmt: skip


def test_sighup_reloads_keys_and_reopens_the_log_file(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - {{name: old, key: {OLD}, scope: admin}}\n")
    log = tmp_path / "mullama.log"
    with Daemon("--api-key-file", str(keys), "--log-file", str(log), "--parallel", "1",
                "--context-size", "512").wait_healthy() as d:  # fmt: skip
        worker = next(m["pid"] for m in httpx.get(
            d.url + "/api/ps", headers={"Authorization": f"Bearer {OLD}"}, timeout=10
        ).json()["models"])  # fmt: skip
        assert (_models(d, OLD), _models(d, NEW)) == (200, 401)
        # logrotate moves the file away, the key file gains a key and loses one.
        os.rename(log, tmp_path / "mullama.log.1")
        keys.write_text(f"keys:\n  - {{name: new, key: {NEW}, scope: admin}}\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _models(d, NEW) == 200)
        assert _models(d, OLD) == 401 and d.proc.poll() is None
        wait_for(lambda: log.exists() and "SIGHUP: log file reopened, 1 API keys loaded"
                 in log.read_text())  # fmt: skip
        # A key file that no longer reads keeps the keys in force.
        keys.write_text("keys: [")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "API keys not reloaded" in log.read_text())
        assert _models(d, NEW) == 200
        # A worker sent SIGHUP runs on.
        os.kill(worker, signal.SIGHUP)
        chat = httpx.post(d.url + "/v1/chat/completions", timeout=60, headers={
            "Authorization": f"Bearer {NEW}"}, json={"model": "smollm2:135m", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        assert chat.status_code == 200
        assert httpx.get(d.url + "/api/ps", headers={"Authorization": f"Bearer {NEW}"},
                         timeout=10).json()["models"][0]["pid"] == worker  # fmt: skip
