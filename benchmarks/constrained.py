"""Constrained decoding: Mullama with and without a JSON schema, and llama-server with the
same schema, in one run, same model.

    .venv/bin/python benchmarks/constrained.py [--rounds 3] [--concurrency 8] [--requests 16]

The schema has nested objects, an enum and an array of objects (a movie). Each round
runs, on each server, after two warm-up requests, the same chat requests (temperature
0.8, 160 tokens at most) at the given concurrency, constrained (``response_format``
json_schema) and free (which goes first alternates by round); tok/s is
the completion tokens of all requests over the wall time. Servers alternate and the
best round of each is kept. Every constrained reply must be valid JSON of the schema
unless it was cut by max_tokens; the invalid ones are counted. Then the compile time of
a 50-property schema in llguidance, on the model's vocabulary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare import (  # noqa: E402
    build_anchors,
    free_port,
    model_path,
    mullama_cmd,
    stop,
    wait_ready,
)

NAME = "smollm2:135m"
MOVIE = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 80},
        "year": {"type": "integer"},
        "genre": {"enum": ["drama", "comedy", "action", "horror", "documentary"]},
        "director": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 60},
                "born": {"type": "integer"},
            },
            "required": ["name", "born"],
        },
        "cast": {
            "type": "array",
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "actor": {"type": "string", "maxLength": 60},
                    "role": {"type": "string", "maxLength": 60},
                },
                "required": ["actor", "role"],
            },
        },
    },
    "required": ["title", "year", "genre", "director", "cast"],
}
TOPICS = ["a space adventure", "a heist in Paris", "a haunted house", "a cooking contest",
          "a chess prodigy", "a lighthouse keeper", "a robot detective", "a mountain rescue"]  # fmt: skip


async def _one(
    client: httpx.AsyncClient, url: str, k: int, schema: dict | None
) -> tuple[int, bool]:
    body: dict = {
        "model": NAME,
        "messages": [
            {"role": "user", "content": f"Describe a movie about {TOPICS[k % 8]} as JSON."}
        ],
        "temperature": 0.8,
        "max_tokens": 160,
        "seed": k,
    }
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "movie", "schema": schema},
        }
    r = await client.post(url + "/v1/chat/completions", json=body)
    r.raise_for_status()
    data = r.json()
    choice = data["choices"][0]
    valid = True
    if schema is not None and choice["finish_reason"] != "length":
        try:
            jsonschema.validate(json.loads(choice["message"]["content"]), schema)
        except (ValueError, jsonschema.ValidationError):
            valid = False
    return data["usage"]["completion_tokens"], valid


async def load(
    url: str, schema: dict | None, concurrency: int, requests: int
) -> tuple[float, int, float]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:

        async def run(k: int) -> tuple[int, bool]:
            async with sem:
                return await _one(client, url, k, schema)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(run(k) for k in range(requests)))
        wall = time.perf_counter() - t0
    tokens = sum(n for n, _ in results)
    return tokens / wall, sum(1 for _, ok in results if not ok), tokens / requests


def compile_ms() -> float:
    """Median time to build a matcher for a 50-property schema, SmolLM2's vocabulary."""
    sys.path.insert(0, str(ROOT / "src"))
    import llguidance as llg

    from mullama.engine.constraint import json_schema_grammar
    from mullama.engine.llama import Model, init_backend

    init_backend()
    tokenizer = Model(model_path()).guidance_tokenizer()
    props = {f"field_{i}": ({"type": "integer"} if i % 3 else {"type": "string", "maxLength": 40})
             for i in range(50)}  # fmt: skip
    schema = {"type": "object", "properties": props, "required": list(props)}
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        m = llg.LLMatcher(tokenizer, json_schema_grammar(schema), log_level=0)
        assert not m.is_error(), m.get_error()
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=16)
    args = p.parse_args(argv)
    bin_dir = build_anchors()
    threads = str(os.cpu_count())
    best: dict[str, float] = {}
    invalid: dict[str, int] = {}

    def servers(port: int) -> dict[str, list[str]]:
        return {
            "mullama": mullama_cmd(port, "--parallel", str(args.concurrency),
                                   "--context-size", "1024", "--threads", threads),
            "llama-server": [
                str(bin_dir / "llama-server"), "-m", model_path(), "--port", str(port),
                "--parallel", str(args.concurrency), "-c", str(1024 * args.concurrency),
                "-t", threads, "-tb", threads, "--alias", NAME, "--log-disable",
            ],
        }  # fmt: skip

    for round_no in range(args.rounds):
        # Each round swaps which mode goes first, so warm-up favours neither.
        modes = [("free", None), ("constrained", MOVIE)]
        if round_no % 2:
            modes.reverse()
        for server in ("mullama", "llama-server"):
            port = free_port()
            proc = subprocess.Popen(servers(port)[server], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            try:
                wait_ready(url, proc)
                asyncio.run(load(url, MOVIE, 2, 2))  # warm-up, not counted
                for mode, schema in modes:
                    tps, bad, mean = asyncio.run(load(url, schema, args.concurrency, args.requests))
                    key = f"{server} {mode}"
                    best[key] = max(best.get(key, 0.0), tps)
                    invalid[key] = invalid.get(key, 0) + bad
                    print(f"{key}: {tps:.1f} tok/s, {mean:.0f} tokens per reply ({bad} invalid)",
                          flush=True)  # fmt: skip
            finally:
                stop(proc)
    m_free, m_con = best["mullama free"], best["mullama constrained"]
    l_free, l_con = best["llama-server free"], best["llama-server constrained"]
    print(
        f"\nbest of {args.rounds} rounds, concurrency {args.concurrency}, {args.requests} requests:"
    )
    print("| server | free tok/s | constrained tok/s | constrained / free | invalid replies |")
    print("| --- | --- | --- | --- | --- |")
    for server, free, con in (("Mullama", m_free, m_con), ("llama-server", l_free, l_con)):
        key = "mullama" if server == "Mullama" else "llama-server"
        print(
            f"| {server} | {free:.1f} | {con:.1f} | {con / free:.2f} | {invalid[key + ' constrained']} |"
        )
    print(f"\nMullama constrained / llama-server constrained: {m_con / l_con:.2f}")
    print(f"50-property schema compile (llguidance, median of 20): {compile_ms():.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
