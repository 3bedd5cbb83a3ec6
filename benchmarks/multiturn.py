"""Multi-turn chat with more conversations than slots: Mullama (with and without its
host-RAM KV cache) against llama-server at its best, in one run, same model, same texts.

    .venv/bin/python benchmarks/multiturn.py [--users 8] [--slots 4] [--turns 5]

U users on S slots (U > S), K turns each. Every conversation starts with one shared
system prompt of several hundred tokens and its own text of about 1,000 tokens (a pasted
document), then each turn adds the previous answer and a new user message; a random
think time (0-3 s) passes between a user's turns. Requests are streamed
``/v1/chat/completions`` at temperature 0 with ``ignore_eos`` (both servers take it), so
every answer is ``--max-tokens`` long: greedy answers differ from server to server (and
with the batch size: llama.cpp is not batch-invariant), and answers ending early would
make the servers' work differ. The texts are new on each run (a fresh seed), the same
for every server within a run, and every server starts cold.

llama-server runs as its documentation recommends for this: ``-np S -c S*CTX
--cache-ram MiB --cache-reuse 256`` (default slot similarity), with the same RAM budget
as Mullama's ``--cache-ram``; ``llama-server-fa-off`` is the same with ``-fa off``
(flash attention off; compare with ``--mullama-args '--flash-attn off'``). Reports per server: TTFT p50/p95 on the first turn and on
turns >= 2, generated tok/s over the run, inter-token p95, prompt tokens reused/computed
(as each server reports them), and the RSS of the server's processes at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare import _children, build_anchors, free_port, model_path, mullama_cmd, stop, wait_ready  # noqa: E402

NAME = "smollm2:135m"
WORDS = ("river stone market letter garden engine window summer orange planet silver "
         "teacher bridge forest signal paper harbor island morning candle doctor music "
         "winter valley copper number yellow station thunder basket mirror village "
         "pocket rocket shadow castle meadow pepper ladder button camera jungle").split()  # fmt: skip


def texts(seed: int, users: int) -> tuple[str, list[str]]:
    rng = random.Random(seed)

    def para(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    system = "You are a helpful assistant for a team. House rules: " + para(300)
    docs = [
        f"Here is my document {u}. " + para(780) + " Please summarise it." for u in range(users)
    ]
    return system, docs


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def user(client: httpx.AsyncClient, url: str, system: str, doc: str, turns: int,
               max_tokens: int, rng: random.Random, out: dict) -> None:  # fmt: skip
    messages = [{"role": "system", "content": system}, {"role": "user", "content": doc}]
    for turn in range(turns):
        body = {"model": NAME, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True},
                "ignore_eos": True}  # fmt: skip
        t0 = time.perf_counter()
        first = last = None
        text, gaps, usage, timings = [], [], None, None
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                usage = obj.get("usage") or usage
                timings = obj.get("timings") or timings
                for ch in obj.get("choices") or []:
                    piece = (ch.get("delta") or {}).get("content")
                    if piece:
                        now = time.perf_counter()
                        if first is None:
                            first = now
                        else:
                            gaps.append(now - last)
                        last = now
                        text.append(piece)
        cached = 0
        if usage and usage.get("prompt_tokens_details"):
            cached = usage["prompt_tokens_details"].get("cached_tokens") or 0
        if timings and "cache_n" in timings:  # llama-server's own count
            cached = timings["cache_n"]
        out["turns"].append({"turn": turn, "ttft": (first or time.perf_counter()) - t0,
                             "prompt": usage["prompt_tokens"], "cached": cached,
                             "completion": usage["completion_tokens"]})  # fmt: skip
        out["gaps"] += gaps
        messages += [{"role": "assistant", "content": "".join(text)},
                     {"role": "user", "content": f"Thanks. Now point {turn + 1}: what about "
                                                 f"the {rng.choice(WORDS)} and the {rng.choice(WORDS)}?"}]  # fmt: skip
        if turn < turns - 1:
            await asyncio.sleep(rng.uniform(0, 3))


def rss(pid: int) -> int:
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def run_one(cmd: list[str], port: int, args: argparse.Namespace, seed: int) -> dict:
    """One server, cold, one round of conversations: its raw samples."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    out: dict = {"turns": [], "gaps": []}
    try:
        wait_ready(url, proc)
        system, docs = texts(seed, args.users)

        async def go() -> float:
            async with httpx.AsyncClient(timeout=1800) as client:
                t0 = time.perf_counter()
                await asyncio.gather(*(
                    user(client, url, system, docs[u], args.turns, args.max_tokens,
                         random.Random(seed * 100 + u), out)
                    for u in range(args.users)
                ))  # fmt: skip
                return time.perf_counter() - t0

        out["wall"] = asyncio.run(go())
        out["rss"] = rss(proc.pid)
        status = httpx.get(url + "/api/system/status", timeout=10)  # Mullama's own
        if status.status_code == 200:
            reuse = status.json()["models_loaded"][0]["kv_reuse"] or {}
            out["moves"] = reuse.get("moves", 0)
            out["preemptions"] = reuse.get("preemptions", 0)
    finally:
        stop(proc)
    return out


def summary(rounds: list[dict]) -> dict:
    """The samples of every round pooled: percentiles over all turns of all rounds."""
    t = [x for r in rounds for x in r["turns"]]
    gaps = [g for r in rounds for g in r["gaps"]]
    wall = sum(r["wall"] for r in rounds)
    later = [x["ttft"] for x in t if x["turn"] >= 1]
    first = [x["ttft"] for x in t if x["turn"] == 0]
    prompt = sum(x["prompt"] for x in t)
    cached = sum(x["cached"] for x in t)
    return {
        "ttft_first_p50": pct(first, 50), "ttft_first_p95": pct(first, 95),
        "ttft_later_p50": pct(later, 50), "ttft_later_p95": pct(later, 95),
        "tok_s": sum(x["completion"] for x in t) / wall, "itl_p95": pct(gaps, 95),
        "itl_p99": pct(gaps, 99), "gap_max": max(gaps, default=0.0),
        "preemptions": sum(r.get("preemptions", 0) for r in rounds),
        "reused": cached, "computed": prompt - cached, "rss": max(r["rss"] for r in rounds),
        "wall": wall, "moves": sum(r.get("moves", 0) for r in rounds),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ctx", type=int, default=4096, help="context per slot")
    p.add_argument("--cache-mib", type=int, default=2048, help="host-RAM KV budget, both")
    p.add_argument("--seed", type=int, default=None, help="of the first round")
    p.add_argument("--rounds", type=int, default=1, help="each with new texts")
    p.add_argument("--only", default=None,
                   help="comma-separated: mullama, mullama-no-cache, llama-server, "
                        "llama-server-fa-off")  # fmt: skip
    p.add_argument("--mullama-args", default="", help="more arguments for both Mullamas")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                   help="also run Mullama with these arguments, as server 'mullama NAME'")  # fmt: skip
    p.add_argument("--raw", type=Path, default=None, help="write every sample here (JSON)")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    threads = str(os.cpu_count())
    s, ctx = str(args.slots), str(args.ctx)
    port = free_port()
    more = shlex.split(args.mullama_args)
    servers = {
        "mullama": mullama_cmd(port, "--parallel", s, "--context-size", ctx, "--threads", threads,
                               "--cache-ram", f"{args.cache_mib}MiB", *more),
        "mullama-no-cache": mullama_cmd(port, "--parallel", s, "--context-size", ctx,
                                        "--threads", threads, "--cache-ram", "0", *more),
        "llama-server": [str(build_anchors() / "llama-server"), "-m", model_path(), "--port",
                         str(port), "-np", s, "-c", str(args.slots * args.ctx), "-t", threads,
                         "-tb", threads, "--cache-ram", str(args.cache_mib), "--cache-reuse", "256",
                         "--alias", NAME, "--log-disable"],
    }  # fmt: skip
    # Flash attention is on by default where the device supports it (the CPU does); the
    # same llama-server with it off, beside a Mullama run with --flash-attn off.
    servers["llama-server-fa-off"] = [*servers["llama-server"], "-fa", "off"]
    for variant in args.variant:
        label, _, extra = variant.partition("=")
        servers[f"mullama {label}"] = [*servers["mullama"], *shlex.split(extra)]
    only = set(args.only.split(",")) if args.only else set(servers)
    only |= {f"mullama {v.partition('=')[0]}" for v in args.variant}
    if only - set(servers):
        p.error(f"--only: unknown {', '.join(sorted(only - set(servers)))}")
    names = [n for n in servers if n in only]
    raw: dict[str, list[dict]] = {n: [] for n in names}
    for round_no in range(args.rounds):
        k = round_no % len(names)
        for name in names[k:] + names[:k]:  # same texts for all in a round; order rotates
            raw[name].append(run_one(servers[name], port, args, seed + round_no))
            r = summary(raw[name][-1:])
            print(f"round {round_no} {name}", json.dumps({k: round(v, 4) if isinstance(v, float)
                                                          else v for k, v in r.items()}), flush=True)  # fmt: skip
    results = {n: summary(raw[n]) for n in names}
    if args.raw:
        args.raw.write_text(json.dumps(raw))
    print(
        f"\nseeds {seed}..{seed + args.rounds - 1}, pooled: {args.users} users on {args.slots} slots, {args.turns} turns, "
        f"{args.max_tokens}-token answers (ignore_eos), think time 0-3 s, streamed, "
        "temperature 0\n"
    )
    print(
        "| server | TTFT p50 turn 1 (s) | TTFT p50 turns >= 2 (s) | p95 turns >= 2 (s) "
        "| tok/s | inter-token p95 (ms) | p99 (ms) | longest gap (s) "
        "| prompt tokens reused / computed | preemptions | RSS (MiB) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['ttft_first_p50']:.2f} | {r['ttft_later_p50']:.3f} "
              f"| {r['ttft_later_p95']:.3f} | {r['tok_s']:.1f} | {r['itl_p95'] * 1000:.1f} "
              f"| {r['itl_p99'] * 1000:.0f} | {r['gap_max']:.1f} "
              f"| {r['reused']} / {r['computed']} | {r['preemptions']} | {r['rss'] / 2**20:.0f} |")  # fmt: skip
    mine = [n for n in results if n.startswith("mullama") and n != "mullama-no-cache"]
    for other in ("llama-server", "llama-server-fa-off"):
        if other not in results:
            continue
        for name in mine:
            m, ls = results[name], results[other]
            print(f"\n{name} / {other}: TTFT p50 turns >= 2 {m['ttft_later_p50'] / ls['ttft_later_p50']:.2f}, "
                  f"p95 {m['ttft_later_p95'] / ls['ttft_later_p95']:.2f}, "
                  f"tok/s {m['tok_s'] / ls['tok_s']:.2f}, inter-token p95 {m['itl_p95'] / ls['itl_p95']:.2f}, "
                  f"p99 {m['itl_p99'] / ls['itl_p99']:.2f}")  # fmt: skip
    if "mullama" in results and "mullama-no-cache" in results:
        m, c = results["mullama"], results["mullama-no-cache"]
        print(f"the RAM cache buys: TTFT p50 turns >= 2 x{c['ttft_later_p50'] / m['ttft_later_p50']:.1f}, "
              f"tok/s x{m['tok_s'] / c['tok_s']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
