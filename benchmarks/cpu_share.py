"""Shared CPUs: two instances on one host, and two busy models in one daemon.

    .venv/bin/python benchmarks/cpu_share.py [--rounds 2] [--requests 16] [--with-off]

Every scenario starts its servers fresh, runs the load generator against each of them at
the same time (concurrency 8 on each, streaming, temperature 0, ignore_eos) and reports
the total completion tokens/s over the wall time of the whole load, and the slowest
request's share of it as errors/timeouts:

- two Mullama daemons with default flags (busy engines split the cores: --cpu-share host)
- two Mullama daemons with --threads 1 each (the best hand-tuned split on 2 cores; on a
  machine with more cores, --threads N/2 each)
- two llama.cpp llama-servers with their default flags (built by
  ../shared/tools/build-llama-anchors.sh)
- one daemon serving two models (the same file under two names), concurrency 8 on each,
  against one model with --parallel 16 at concurrency 16
- one daemon alone at concurrency 8 (the reference for the one below)
- with --with-off: two daemons with --cpu-share off (the old default: every engine runs
  all cores' threads), which can take minutes on 2 cores; the same with
  OMP_WAIT_POLICY=PASSIVE (threads sleep at barriers instead of spinning); and one daemon
  alone with OMP_WAIT_POLICY=PASSIVE

Servers of a scenario run side by side; scenarios alternate over ``--rounds`` and the
best round of each is kept. Prints a Markdown table; ``--out FILE`` writes the raw runs.
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

from compare import ROOT, build_anchors, free_port, model_path, mullama_cmd, stop, wait_ready

sys.path.insert(0, str(ROOT / "benchmarks"))
import loadgen  # noqa: E402

NAME = "smollm2:135m"


def mullama(port: int, *extra: str) -> list[str]:
    return mullama_cmd(port, "--context-size", "2048", *extra)


def llama_server(bin_dir: Path, model: str, port: int, parallel: int) -> list[str]:
    return [
        str(bin_dir / "llama-server"), "-m", model, "--port", str(port),
        "--parallel", str(parallel), "-c", str(2048 * parallel), "--alias", NAME,
        "--log-disable",
    ]  # fmt: skip


async def drive(loads: list[tuple[str, str, int]], args: argparse.Namespace) -> dict:
    """Run the loads ``(url, model, concurrency)`` at the same time."""
    spaces = [
        argparse.Namespace(
            url=url, model=model, concurrency=conc, requests=args.requests * conc // 8,
            max_tokens=args.max_tokens, temperature=0.0, timeout=args.timeout,
        )
        for url, model, conc in loads
    ]  # fmt: skip
    # Warm-up (loads the model) on each, then the measured runs together.
    for ns in spaces:
        await loadgen.run(argparse.Namespace(**{**vars(ns), "requests": 1, "concurrency": 1}))
    start = time.perf_counter()
    parts = await asyncio.gather(*(loadgen.run(ns) for ns in spaces))
    elapsed = time.perf_counter() - start
    tokens = sum(p["completion_tokens"] for p in parts)
    return {
        "elapsed_s": round(elapsed, 2),
        "tok_per_s": round(tokens / elapsed, 1),
        "per_server_tok_per_s": [p["tok_per_s"] for p in parts],
        "errors": sum(p["errors"] for p in parts),
        "parts": parts,
    }


def scenario(cmds: list[tuple[int, list[str]]], loads: list[tuple[int, str, int]], args) -> dict:
    procs, logs = [], []
    try:
        for i, (port, cmd) in enumerate(cmds):
            log = open(f"/tmp/cpu-share-{i}.log", "w")  # noqa: SIM115
            logs.append(log)
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            wait_ready(f"http://127.0.0.1:{port}", procs[-1])
        urls = [(f"http://127.0.0.1:{port}", model, conc) for port, model, conc in loads]
        return asyncio.run(drive(urls, args))
    finally:
        for proc in procs:
            stop(proc)
        for log in logs:
            log.close()


def scenarios(args: argparse.Namespace, bin_dir: Path, model: str) -> dict:
    def two(make) -> tuple[list[tuple[int, list[str]]], list[tuple[int, str, int]]]:
        a, b = free_port(), free_port()
        return [(a, make(a)), (b, make(b))], [(a, NAME, 8), (b, NAME, 8)]

    out = {
        "2 daemons, default flags": two(lambda p: mullama(p, "--parallel", "8")),
        "2 daemons, --threads 1 each (hand-tuned)": two(
            lambda p: mullama(p, "--parallel", "8", "--threads", str(max(1, cpus() // 2)))
        ),
        "2 llama-servers, default flags": two(lambda p: llama_server(bin_dir, model, p, 8)),
    }
    if args.with_off:
        out["2 daemons, --cpu-share off"] = two(
            lambda p: mullama(p, "--parallel", "8", "--cpu-share", "off")
        )
        # The other cure for spinning: OpenMP threads that sleep at every barrier.
        out["2 daemons, --cpu-share off, OMP_WAIT_POLICY=PASSIVE"] = two(
            lambda p: (
                ["env", "OMP_WAIT_POLICY=PASSIVE"]
                + mullama(p, "--parallel", "8", "--cpu-share", "off")
            )
        )
        p = free_port()
        out["1 daemon alone, c=8, OMP_WAIT_POLICY=PASSIVE"] = (
            [(p, ["env", "OMP_WAIT_POLICY=PASSIVE"] + mullama(p, "--parallel", "8"))],
            [(p, NAME, 8)],
        )
    p = free_port()
    out["1 daemon, 2 models, c=8 each"] = (
        [(p, mullama(p, "--parallel", "8", "--model", f"a={model}", "--model", f"b={model}"))],
        [(p, "a", 8), (p, "b", 8)],
    )
    p = free_port()
    out["1 daemon, 1 model, c=16"] = ([(p, mullama(p, "--parallel", "16"))], [(p, NAME, 16)])
    p = free_port()
    out["1 daemon alone, c=8"] = ([(p, mullama(p, "--parallel", "8"))], [(p, NAME, 8)])
    return out


def cpus() -> int:
    return len(os.sched_getaffinity(0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requests", type=int, default=16, help="requests per 8 of concurrency")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--with-off", action="store_true")
    p.add_argument("--only", help="run only the scenarios whose name contains this")
    p.add_argument("--out")
    args = p.parse_args(argv)
    bin_dir = build_anchors()
    model = model_path()
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for name, (cmds, loads) in scenarios(args, bin_dir, model).items():
            if args.only and args.only not in name:
                continue
            result = scenario(cmds, loads, args)
            print(f"{name}: {result['tok_per_s']} tok/s in {result['elapsed_s']} s", flush=True)
            runs.setdefault(name, []).append(result)
    print(
        f"\n{cpus()} CPUs, SmolLM2-135M-Instruct Q4_1, max_tokens {args.max_tokens}, "
        f"best of {args.rounds} rounds\n"
    )
    print("| scenario | total tok/s | per server/model tok/s | wall s | errors |")
    print("| --- | --- | --- | --- | --- |")
    for name, results in runs.items():
        r = max(results, key=lambda x: x["tok_per_s"])
        per = " / ".join(f"{x:.1f}" for x in r["per_server_tok_per_s"])
        print(f"| {name} | {r['tok_per_s']:.1f} | {per} | {r['elapsed_s']} | {r['errors']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
