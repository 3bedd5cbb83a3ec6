"""Load generator for any OpenAI-compatible server.

    python benchmarks/loadgen.py --url http://127.0.0.1:8080 --model smollm2:135m \
        --concurrency 8 --requests 32 --max-tokens 128

Streams /v1/completions with temperature 0 and ``ignore_eos`` (so every request produces
exactly max_tokens, on Mullama and on llama-server alike) and prints aggregate completion
tokens per second, time to first token p50/p95, and errors. ``--json`` prints one JSON
object instead of the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field

import httpx

PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a steam engine works, step by step.",
    "Describe a walk through a busy market in a coastal town at dawn.",
    "List the history of the bicycle and how its design changed over time.",
    "Tell the story of a small robot that learns to paint.",
    "Write a travel guide for a city that exists only at night.",
    "Explain how bread rises, for a curious child.",
    "Write the diary of a sailor crossing the Atlantic in 1850.",
]


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def one_request(
    client: httpx.AsyncClient, args: argparse.Namespace, i: int, result: Result
) -> None:
    body = {
        "model": args.model,
        "prompt": PROMPTS[i % len(PROMPTS)],
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    if getattr(args, "logprobs", None) is not None:
        body["logprobs"] = args.logprobs
    start = time.perf_counter()
    first: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    try:
        async with client.stream("POST", args.url.rstrip("/") + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    raise RuntimeError(str(obj["error"])[:200])
                if obj.get("usage"):
                    usage_tokens = obj["usage"].get("completion_tokens")
                for choice in obj.get("choices") or []:
                    if choice.get("text"):
                        chunks += 1
                        if first is None:
                            first = time.perf_counter()
    except Exception as exc:  # noqa: BLE001 - counted and reported
        result.errors += 1
        if len(result.error_samples) < 3:
            result.error_samples.append(str(exc))
        return
    if first is not None:
        result.ttft.append(first - start)
    result.tokens += usage_tokens if usage_tokens is not None else chunks


async def run(args: argparse.Namespace) -> dict:
    result = Result()
    sem = asyncio.Semaphore(args.concurrency)
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
        # Warm-up: load the model, fill caches.
        await one_request(
            client, argparse.Namespace(**{**vars(args), "max_tokens": 4}), 0, Result()
        )

        async def task(i: int) -> None:
            async with sem:
                await one_request(client, args, i, result)

        start = time.perf_counter()
        await asyncio.gather(*(task(i) for i in range(args.requests)))
        elapsed = time.perf_counter() - start
    return {
        "url": args.url,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "elapsed_s": round(elapsed, 3),
        "completion_tokens": result.tokens,
        "tok_per_s": round(result.tokens / elapsed, 2) if elapsed > 0 else 0.0,
        "ttft_p50_ms": round(percentile(result.ttft, 0.5) * 1000, 1),
        "ttft_p95_ms": round(percentile(result.ttft, 0.95) * 1000, 1),
        "ttft_mean_ms": round(statistics.fmean(result.ttft) * 1000, 1) if result.ttft else None,
        "errors": result.errors,
        "error_samples": result.error_samples,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--model", default="smollm2:135m")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--logprobs", type=int, help="ask for this many top logprobs per token")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:>18}: {value}")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
