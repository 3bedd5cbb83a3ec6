"""The response cache: a hit's latency, and what the cache costs a miss, side by side with
the same request answered live by Mullama without the cache and by llama-server.

    .venv/bin/python benchmarks/response_cache.py [--hits 300] [--misses 12] [--rounds 2]

Three servers on the same model, one at a time busy: Mullama with ``--response-cache``,
Mullama without it, and llama.cpp's llama-server (anchors built as compare.py does).
Requests are non-streamed chat completions at temperature 0 with a 128-token answer
(``ignore_eos``), one at a time over one keep-alive connection (httpx), so the figure is
one request's latency on loopback.

- **hit**: the same request ``--hits`` times on the cached Mullama (after one miss
  stored it): p50 / p95 / p99 in ms, against the live answer's p50 on each server.
- **miss cost**: ``--misses`` distinct requests (each one new to the cache) on the
  cached and on the plain Mullama, alternated request by request, ``--rounds`` times:
  the ratio of mean latencies, cached / plain (1.00 = no cost).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare import build_anchors, free_port, model_path, mullama_cmd, stop, wait_ready  # noqa: E402

NAME = "smollm2:135m"


def body(k: int, max_tokens: int = 128) -> dict:
    return {"model": NAME, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"Tell story number {k} about a comet."}]}  # fmt: skip


def timed(client: httpx.Client, url: str, payload: dict) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    r = client.post(url + "/v1/chat/completions", json=payload)
    ms = (time.perf_counter() - t0) * 1000
    r.raise_for_status()
    return ms, r


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hits", type=int, default=300)
    p.add_argument("--misses", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--live", type=int, default=8, help="live answers timed on each server")
    args = p.parse_args(argv)
    threads = str(os.cpu_count())
    common = ("--parallel", "1", "--context-size", "1024", "--threads", threads)
    ports = {"cached": free_port(), "plain": free_port(), "llama-server": free_port()}
    cmds = {
        "cached": mullama_cmd(ports["cached"], *common, "--response-cache"),
        "plain": mullama_cmd(ports["plain"], *common),
        "llama-server": [str(build_anchors() / "llama-server"), "-m", model_path(),
                         "--port", str(ports["llama-server"]), "--parallel", "1", "-c", "1024",
                         "-t", threads, "-tb", threads, "--alias", NAME, "--log-disable"],
    }  # fmt: skip
    procs = {k: subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for k, c in cmds.items()}  # fmt: skip
    urls = {k: f"http://127.0.0.1:{port}" for k, port in ports.items()}
    try:
        for k in procs:
            wait_ready(urls[k], procs[k])
        with httpx.Client(timeout=600) as client:
            for k in urls:  # warm-up, not counted
                timed(client, urls[k], body(-1, 16))
            live = {k: [timed(client, urls[k], body(1000 + i))[0] for i in range(args.live)]
                    for k in urls}  # fmt: skip

            ms, first = timed(client, urls["cached"], body(0))
            assert first.headers["x-mullama-cache"] == "miss", first.headers
            tokens = first.json()["usage"]["completion_tokens"]
            hits = []
            for _ in range(args.hits):
                ms, r = timed(client, urls["cached"], body(0))
                assert r.headers["x-mullama-cache"] == "hit", r.headers
                hits.append(ms)

            cost: dict[str, list[float]] = {"cached": [], "plain": []}
            for round_no in range(args.rounds):
                for i in range(args.misses):
                    order = ["cached", "plain"] if (i + round_no) % 2 == 0 else ["plain", "cached"]
                    for k in order:
                        ms, r = timed(client, urls[k], body(10_000 * (round_no + 1) + i))
                        if k == "cached":
                            assert r.headers["x-mullama-cache"] == "miss", r.headers
                        cost[k].append(ms)
    finally:
        for proc in procs.values():
            stop(proc)

    print(f"answer: {tokens} tokens, non-streamed, one request at a time\n")
    print("| | p50 ms | p95 ms | p99 ms |")
    print("| --- | --- | --- | --- |")
    print(f"| Mullama, cache hit ({args.hits}) | {pct(hits, 50):.2f} | {pct(hits, 95):.2f} "
          f"| {pct(hits, 99):.2f} |")  # fmt: skip
    for k, label in (("cached", "Mullama --response-cache, live (miss)"),
                     ("plain", "Mullama, no cache, live"), ("llama-server", "llama-server, live")):  # fmt: skip
        print(f"| {label} ({args.live}) | {pct(live[k], 50):.1f} | {pct(live[k], 95):.1f} | |")
    ratio = statistics.mean(cost["cached"]) / statistics.mean(cost["plain"])
    print(f"\nmiss cost: mean {statistics.mean(cost['cached']):.1f} ms with the cache, "
          f"{statistics.mean(cost['plain']):.1f} ms without ({len(cost['plain'])} requests "
          f"each, alternated): cached / plain = {ratio:.3f}")  # fmt: skip
    print(
        f"hit p50 / live p50 without cache: {pct(hits, 50) / pct(live['plain'], 50):.4f}; "
        f"vs llama-server live: {pct(hits, 50) / pct(live['llama-server'], 50):.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
