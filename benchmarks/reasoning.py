"""What separating a model's thinking from its answer costs: the same chat requests, with
a reasoning format and without one, alternated.

    .venv/bin/python benchmarks/reasoning.py [--rounds 3] [--concurrency 8] [--requests 32]

Two daemons on the embedded model, each with the same custom model: SmolLM2 under
DeepSeek-R1's chat template, whose generation prompt opens the thinking block, so every
generated token is thinking. One daemon separates it (the default: the reply's thinking
goes to ``reasoning_content``, each token through the thinking reader); the other runs
with ``--reasoning-format none`` (the raw text in ``content``, as before issue 34). The
requests are identical (greedy, ``ignore_eos``, the same token count), so the difference
is the reader's cost alone. Each round streams ``--requests`` chat completions at the
given concurrency through each daemon in turn, in an order that alternates by round;
tok/s is the completion tokens (from usage) over the wall time. Prints the best round of
each and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from agent_apis import TOPICS  # noqa: E402
from compare import free_port, mullama_cmd, stop, wait_ready  # noqa: E402

TEMPLATE = ROOT / "tests" / "unit" / "templates" / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"
NAME = "smol-r1"


def _body(k: int, max_tokens: int) -> dict:
    prompt = f"Think about {TOPICS[k % len(TOPICS)]}, then write a story."
    return {
        "model": NAME, "messages": [{"role": "user", "content": prompt}], "stream": True,
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip


async def _one(client: httpx.AsyncClient, url: str, k: int, max_tokens: int) -> tuple[int, int]:
    """One streamed reply: its completion tokens and its thinking tokens (from usage)."""
    tokens = thinking = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=_body(k, max_tokens)) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            usage = json.loads(line[6:]).get("usage")
            if usage:
                tokens = usage["completion_tokens"]
                details = usage.get("completion_tokens_details") or {}
                thinking = details.get("reasoning_tokens") or 0
    return tokens, thinking


async def load(url: str, concurrency: int, requests: int, max_tokens: int) -> tuple[float, int]:
    """tok/s of the whole load, and the thinking tokens it reported."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:

        async def run(k: int) -> tuple[int, int]:
            async with sem:
                return await _one(client, url, k, max_tokens)

        t0 = time.perf_counter()
        counts = await asyncio.gather(*(run(k) for k in range(requests)))
        wall = time.perf_counter() - t0
    return sum(c[0] for c in counts) / wall, sum(c[1] for c in counts)


def _create(url: str) -> None:
    body = {"model": NAME, "from": "smollm2:135m", "template": TEMPLATE.read_text(),
            "stream": False}  # fmt: skip
    httpx.post(url + "/api/create", json=body, timeout=120).raise_for_status()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    args = p.parse_args(argv)
    common = ("--parallel", str(args.concurrency), "--context-size", "1024")
    servers = {"separated": (), "raw (--reasoning-format none)": ("--reasoning-format", "none")}
    procs, urls = [], {}
    best: dict[str, float] = {}
    try:
        for name, extra in servers.items():
            port = free_port()
            cmd = mullama_cmd(port, *common, *extra)
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))  # fmt: skip
            urls[name] = f"http://127.0.0.1:{port}"
            wait_ready(urls[name], procs[-1])
            _create(urls[name])
            asyncio.run(load(urls[name], 2, 2, 16))  # warm-up: loads the model
        names = list(servers)
        for round_no in range(args.rounds):
            for name in names if round_no % 2 == 0 else names[::-1]:
                tps, thinking = asyncio.run(
                    load(urls[name], args.concurrency, args.requests, args.max_tokens)
                )
                best[name] = max(best.get(name, 0.0), tps)
                print(f"{name}: {tps:.1f} tok/s, {thinking} thinking tokens", flush=True)
    finally:
        for proc in procs:
            stop(proc)
    sep, raw = best[names[0]], best[names[1]]
    print(f"\nbest of {args.rounds} rounds, concurrency {args.concurrency}, streamed:")
    print("| reasoning format | tok/s |\n| --- | --- |")
    for name in names:
        print(f"| {name} | {best[name]:.1f} |")
    print(f"\nseparated / raw: {sep / raw:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
