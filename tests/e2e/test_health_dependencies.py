"""/health reports what the daemon depends on, from background probes: the model
store's disk, Redis (rate limits there), the OTLP collector, each model's worker. A
dependency that is down makes it ``degraded`` while requests are still served, and
/health never waits on it."""

from __future__ import annotations

import httpx

from tests.conftest import Daemon, free_port, wait_for
from tests.e2e.test_security_redis import redis_url  # noqa: F401 - the real redis-server


def _health(d: Daemon) -> dict:
    r = httpx.get(d.url + "/health", timeout=10)
    assert r.status_code == 200  # optional dependencies never fail the health check
    return r.json()


def test_a_stopped_redis_and_an_absent_collector_are_degraded_not_down(redis_url):  # noqa: F811
    dead_collector = f"http://127.0.0.1:{free_port()}"
    with Daemon("--rate-limit-storage", redis_url, "--otlp-endpoint", dead_collector,
                "--parallel", "1", "--context-size", "256").wait_healthy() as d:  # fmt: skip
        wait_for(lambda: _health(d)["dependencies"]["redis"]["status"] == "ok")
        health = _health(d)
        deps = health["dependencies"]
        assert deps["model_store"]["status"] in ("ok", "degraded")
        assert "bytes free" in deps["model_store"]["detail"]
        assert deps["otlp_collector"]["status"] == "down"
        assert deps["redis"]["latency_ms"] is not None
        assert health["status"] == "degraded"  # the collector is down
        assert any(k.startswith("model:") for k in deps)
        # Redis stops: reported down at the next probe, and requests are still answered.
        stop_redis(redis_url)
        wait_for(lambda: _health(d)["dependencies"]["redis"]["status"] == "down")
        assert httpx.get(d.url + "/health/live").status_code == 200


def stop_redis(url: str) -> None:
    """Stop the fixture's redis-server (found by its port) with SHUTDOWN NOSAVE."""
    import socket

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"SHUTDOWN NOSAVE\r\n")
        s.recv(64)
