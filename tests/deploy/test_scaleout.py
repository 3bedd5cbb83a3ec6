"""Scale-out: three Mullama instances behind a real nginx, then a real HAProxy (the configs
in deploy/, started by deploy/local-cluster.sh), and one shared rate-limit budget in a
real Redis. Lean on purpose: the tiny model, 2 slots of 512 tokens per instance, short
replies."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import MODEL, wait_for
from tests.deploy.cluster import CHAT, Cluster, missing_tools

# Default threads: the three instances share this machine's cores, and busy engines split
# them (--cpu-share host). A drain long enough for the victim's queue on a loaded machine
# (a hang guard, not a speed assertion).
LEAN = ("--parallel", "2", "--context-size", "512", "--shutdown-timeout", "120")
N = 30


def _chat(client, i: int) -> tuple[int, str]:
    r = client.post(
        CHAT,
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Count to {i % 7 + 3}."}],
            "max_tokens": 16,
        },
    )
    return r.status_code, r.text


def _failures(results: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(code, text[:300]) for code, text in results if code != 200]


@contextmanager
def _cluster(tmp_path, proxy: str, *args: str, **kw) -> Iterator[Cluster]:
    """A started cluster, stopped afterwards; its logs are printed if the test fails."""
    missing = missing_tools(proxy)
    if missing:
        pytest.fail(f"missing {missing}: run scripts/install-deploy-tools.sh")
    cluster = Cluster(tmp_path, proxy, *args, **kw).start()
    try:
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


def _spread_then_drain(cluster: Cluster) -> None:
    with cluster.client(limits=_limits()) as client:
        # 1. 30 concurrent requests: all succeed, every instance served some.
        base = [cluster.served(i) for i in range(3)]
        with ThreadPoolExecutor(N) as pool:
            results = list(pool.map(lambda i: _chat(client, i), range(N)))
        assert all(code == 200 for code, _ in results), _failures(results)
        served = [cluster.served(i) - base[i] for i in range(3)]
        assert sum(served) == N and all(s > 0 for s in served), served

        # 2. Again, and SIGTERM instance 3 while it has requests in flight.
        victim = 2
        with ThreadPoolExecutor(N) as pool:
            futures = [pool.submit(_chat, client, i) for i in range(N)]
            wait_for(lambda: cluster.busy(victim) >= 1 or all(f.done() for f in futures), 120, 0.02)
            in_flight = cluster.busy(victim)
            cluster.sigterm(victim)
            results = [f.result() for f in futures]
        assert all(code == 200 for code, _ in results), _failures(
            results
        )  # the client saw no error
        wait_for(lambda: not cluster.alive(victim), timeout=120)

        # Its requests in flight at the signal completed during the drain.
        log = cluster.access_log(victim)
        drain_at = next(i for i, e in enumerate(log) if "draining" in e.get("msg", ""))
        after = [e for e in log[drain_at:] if e.get("path") == CHAT]
        assert in_flight >= 1, "the victim had nothing in flight when signalled"
        assert sum(1 for e in after if e.get("status") == 200) >= 1, after
        assert all(e.get("status") in (200, 503) for e in after), after

        # 3. New requests go to the others.
        before = [cluster.served(i) for i in range(2)]
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda i: _chat(client, i), range(6)))
        assert all(code == 200 for code, _ in results), _failures(results)
        assert sum(cluster.served(i) for i in range(2)) - sum(before) == 6


def _limits():
    return httpx.Limits(max_connections=N, max_keepalive_connections=N)


def test_nginx_spreads_load_and_hides_a_draining_instance(tmp_path):
    with _cluster(tmp_path, "nginx", *LEAN) as cluster:
        with cluster.client() as client:
            # TLS terminated by nginx with the cluster's certificate; plain HTTP redirects.
            assert client.get("/health/ready").json()["status"] == "ready"
            http = cluster.env["HTTP_PORT"]
            r = httpx.get(f"http://127.0.0.1:{http}/v1/models", timeout=30)
            assert r.status_code == 301 and r.headers["location"].startswith("https://")
            # A stream comes through unbuffered, as SSE.
            with client.stream(
                "POST", CHAT,
                json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                      "max_tokens": 8, "stream": True},
            ) as s:  # fmt: skip
                assert s.headers["content-type"].startswith("text/event-stream")
                body = "".join(s.iter_text())
            assert body.rstrip().endswith("data: [DONE]")
        _spread_then_drain(cluster)


def test_haproxy_spreads_load_routes_embeddings_and_hides_a_draining_instance(tmp_path):
    with _cluster(tmp_path, "haproxy", *LEAN, embed_instances="1") as cluster:
        with cluster.client() as client:
            # Embeddings go to their own backend: here, instance 1 only.
            for _ in range(4):
                r = client.post("/v1/embeddings", json={"model": MODEL, "input": "hello"})
                assert r.status_code == 200, r.text
        served = [cluster.served(i, "/v1/embeddings") for i in range(3)]
        assert served == [4, 0, 0], served
        _spread_then_drain(cluster)


def test_three_instances_share_one_rate_limit_budget_in_redis(tmp_path):
    budget = 9
    with _cluster(
        tmp_path, "nginx", "--parallel", "1", "--context-size", "256",
        "--rate-limit-requests", str(budget),
    ) as cluster:  # fmt: skip
        with cluster.client() as client:
            codes = [client.get("/v1/models").status_code for _ in range(2 * budget)]
        assert codes.count(200) == budget, codes
        assert codes.count(429) == budget, codes
        # The budget was spent on several instances: one count, not one per instance.
        # (From the access logs: a scrape of /metrics from here would be rate limited too.)
        ok = [
            sum(1 for e in cluster.access_log(i) if e.get("path") == "/v1/models"
                and e.get("status") == 200)
            for i in range(3)
        ]  # fmt: skip
        assert sum(ok) == budget and sum(1 for n in ok if n > 0) >= 2, ok
