"""Streamed decode speed through the Responses and Anthropic Messages APIs against chat
completions, one Mullama, same load, alternated.

    .venv/bin/python benchmarks/agent_apis.py [--rounds 3] [--concurrency 8] [--requests 32]

Each round streams the same requests (a story prompt, temperature 0, at most 128 tokens)
at the given concurrency through ``/v1/chat/completions``, ``/v1/responses`` and
``/v1/messages``, in an order that rotates by round; tok/s is the completion tokens of
all requests (as each API's usage reports them) over the wall time. Prints the best round
of each and the ratios to chat completions.
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
from compare import free_port, mullama_cmd, stop, wait_ready  # noqa: E402

NAME = "smollm2:135m"
TOPICS = ["a dragon", "a sailor", "a lost city", "a clockmaker", "a comet", "a garden",
          "a detective", "a winter night"]  # fmt: skip


def _request(api: str, k: int, max_tokens: int) -> tuple[str, dict]:
    prompt = f"Write a long story about {TOPICS[k % len(TOPICS)]}."
    if api == "chat":
        return "/v1/chat/completions", {
            "model": NAME, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": max_tokens, "temperature": 0, "stream_options": {"include_usage": True},
        }  # fmt: skip
    if api == "responses":
        return "/v1/responses", {"model": NAME, "input": prompt, "stream": True,
                                 "max_output_tokens": max_tokens, "temperature": 0}  # fmt: skip
    return "/v1/messages", {"model": NAME, "max_tokens": max_tokens, "stream": True,
                            "temperature": 0, "messages": [{"role": "user", "content": prompt}]}  # fmt: skip


def _tokens(api: str, data: dict) -> int | None:
    """The completion tokens an event reports, if it is the one that does."""
    if api == "chat" and data.get("usage"):
        return data["usage"]["completion_tokens"]
    if api == "responses" and data.get("type") in ("response.completed", "response.incomplete"):
        return data["response"]["usage"]["output_tokens"]
    if api == "messages" and data.get("type") == "message_delta":
        return data["usage"]["output_tokens"]
    return None


async def _one(client: httpx.AsyncClient, url: str, api: str, k: int, max_tokens: int) -> int:
    path, body = _request(api, k, max_tokens)
    tokens = 0
    async with client.stream("POST", url + path, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                found = _tokens(api, json.loads(line[6:]))
                tokens = found if found is not None else tokens
    return tokens


async def load(
    url: str, api: str, concurrency: int, requests: int, max_tokens: int
) -> tuple[float, float]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:

        async def run(k: int) -> int:
            async with sem:
                return await _one(client, url, api, k, max_tokens)

        t0 = time.perf_counter()
        counts = await asyncio.gather(*(run(k) for k in range(requests)))
        wall = time.perf_counter() - t0
    return sum(counts) / wall, sum(counts) / requests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    args = p.parse_args(argv)
    port = free_port()
    cmd = mullama_cmd(port, "--parallel", str(args.concurrency), "--context-size", "1024")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    apis = ["chat", "responses", "messages"]
    best: dict[str, float] = {}
    try:
        wait_ready(url, proc)
        asyncio.run(load(url, "chat", 2, 2, 16))  # warm-up, not counted
        for round_no in range(args.rounds):
            order = apis[round_no % 3 :] + apis[: round_no % 3]
            for api in order:
                tps, mean = asyncio.run(
                    load(url, api, args.concurrency, args.requests, args.max_tokens)
                )
                best[api] = max(best.get(api, 0.0), tps)
                print(f"{api}: {tps:.1f} tok/s, {mean:.0f} tokens per reply", flush=True)
    finally:
        stop(proc)
    print(f"\nbest of {args.rounds} rounds, concurrency {args.concurrency}, streamed:")
    print("| API | tok/s | / chat completions |")
    print("| --- | --- | --- |")
    for api in apis:
        print(f"| {api} | {best[api]:.1f} | {best[api] / best['chat']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
