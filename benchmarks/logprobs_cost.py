"""What logprobs cost: one Mullama, the same load with logprobs off and on, alternated.

    .venv/bin/python benchmarks/logprobs_cost.py [--rounds 3] [--concurrency 8] [--top 5]

Streams /v1/completions (128 tokens, temperature 0, ignore_eos) at the given concurrency;
each round runs "off", then "logprobs 0" (the chosen token's only), then "logprobs N".
Then prompt scoring as lm-evaluation-harness does it (one request: 64 prompts of about
100 tokens, echo, max_tokens 0, logprobs 0) against llama-batched-bench's prompt speed
(S_PP, a 100-token prompt, no HTTP) on the same model. Prints the best round of each.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import loadgen  # noqa: E402
from compare import free_port, mullama_cmd, stop, wait_ready  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--top", type=int, default=5)
    args = p.parse_args(argv)
    import subprocess

    port = free_port()
    cmd = mullama_cmd(port, "--parallel", str(args.concurrency), "--context-size", "2048")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    modes = {"off": None, "logprobs 0": 0, f"logprobs {args.top}": args.top}
    best: dict[str, float] = {}
    try:
        wait_ready(url, proc)
        for _ in range(args.rounds):
            for name, lp in modes.items():
                ns = argparse.Namespace(
                    url=url, model="smollm2:135m", concurrency=args.concurrency,
                    requests=args.requests, max_tokens=128, temperature=0.0, timeout=600.0,
                    logprobs=lp,
                )  # fmt: skip
                out = asyncio.run(loadgen.run(ns))
                assert out["errors"] == 0, out["error_samples"]
                best[name] = max(best.get(name, 0.0), out["tok_per_s"])
                print(f"{name}: {out['tok_per_s']:.1f} tok/s", flush=True)
            speed = score_once(url)
            best["scoring"] = max(best.get("scoring", 0.0), speed)
            print(f"scoring: {speed:.1f} prompt tok/s", flush=True)
    finally:
        stop(proc)
    print(f"\nbest of {args.rounds} rounds, concurrency {args.concurrency}:")
    scoring = best.pop("scoring", None)
    for name, tps in best.items():
        print(f"- {name}: {tps:.1f} tok/s = {tps / best['off']:.2f}x off")
    if scoring:
        pp = prefill_speed()
        print(
            f"- prompt scoring: {scoring:.1f} prompt tok/s; batched-bench S_PP {pp:.1f}: {scoring / pp:.2f}x"
        )
    return 0


def score_once(url: str) -> float:
    """Prompt tokens per second of one 64-prompt scoring request."""
    import time

    import httpx

    prompts = [
        " ".join(f"{loadgen.PROMPTS[i % 8]} item {i} of the list" for _ in range(4))
        for i in range(64)
    ]
    body = {
        "model": "smollm2:135m",
        "prompt": prompts,
        "max_tokens": 0,
        "echo": True,
        "logprobs": 0,
    }
    t = time.perf_counter()
    out = httpx.post(url + "/v1/completions", json=body, timeout=600).json()
    return out["usage"]["prompt_tokens"] / (time.perf_counter() - t)


def prefill_speed() -> float:
    import os
    import re
    import subprocess

    from compare import build_anchors, model_path

    bench = build_anchors() / "llama-batched-bench"
    cmd = [str(bench), "-m", model_path(), "-c", "4096", "-b", "512", "-ub", "512",
           "-npp", "100", "-ntg", "1", "-npl", "1", "-t", str(os.cpu_count())]  # fmt: skip
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and re.fullmatch(r"\d+", cells[2] or ""):
            return float(cells[5])
    raise RuntimeError("no S_PP in llama-batched-bench's output")


if __name__ == "__main__":
    sys.exit(main())
