"""What Mullama in front of a remote engine costs: streaming through ``--remote`` vs
straight to llama.cpp's own llama-server, same engine, same run.

    .venv/bin/python benchmarks/remote.py [--parallel 8] [--max-tokens 128] [--rounds 3]

One llama-server (the engine, ``-np N``) and one Mullama daemon with ``--remote
smol=<llama-server>/v1``. A remote engine has its own machine, so by default the engine
gets the last CPU to itself (``-t 1``) and Mullama and the load generator share the
others; ``--shared-cpus`` runs everything on all CPUs (the engine with every thread, and
Mullama's CPU time taken from it). After a warm-up round, each round runs the load
generator (streamed /v1/completions, temperature 0, ignore_eos) at concurrency 1 and N
straight to the engine, then through Mullama; the numbers are the medians over the
rounds of each round's pair (ratio of tokens/s, difference of TTFT p50), so a noisy
neighbour during one round hurts both sides of it alike. Also the CPU time the Mullama
daemon spent per streamed token. ``--out FILE`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import compare  # noqa: E402
import loadgen  # noqa: E402


def _load(url: str, model: str, conc: int, args: argparse.Namespace) -> dict:
    ns = argparse.Namespace(
        url=url, model=model, concurrency=conc, temperature=0.0, timeout=600.0,
        requests=args.requests if conc > 1 else max(4, args.requests // 4),
        max_tokens=args.max_tokens,
    )  # fmt: skip
    return loadgen.asyncio.run(loadgen.run(ns))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shared-cpus", action="store_true")
    p.add_argument("--out")
    args = p.parse_args(argv)
    bin_dir = compare.build_anchors()
    engine_port, front_port = compare.free_port(), compare.free_port()
    engine_url = f"http://127.0.0.1:{engine_port}"
    front_url = f"http://127.0.0.1:{front_port}"
    env = {**os.environ, "LD_LIBRARY_PATH": str(bin_dir)}
    cpus = sorted(os.sched_getaffinity(0))
    split = not args.shared_cpus and len(cpus) >= 2
    engine_cpus, front_cpus = ({cpus[-1]}, set(cpus[:-1])) if split else (set(cpus), set(cpus))
    engine = subprocess.Popen(
        [str(bin_dir / "llama-server"), "-m", compare.model_path(), "--port", str(engine_port),
         "-np", str(args.parallel), "-c", str(args.parallel * 1024),
         "-t", str(len(engine_cpus)), "--log-disable"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, engine_cpus),
    )  # fmt: skip
    os.sched_setaffinity(0, front_cpus)  # the load generator, and Mullama (inherited)
    front = subprocess.Popen(
        compare.mullama_cmd(front_port, "--remote", f"smol={engine_url}/v1",
                            "--remote-opt", f"smol:max_inflight={args.parallel}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    runs: dict[str, dict[int, list[dict]]] = {"direct": {}, "mullama": {}}
    try:
        compare.wait_ready(engine_url, engine)
        compare.wait_ready(front_url, front)
        for conc in (1, args.parallel):  # warm-up
            _load(engine_url, "smol", conc, args)
            _load(front_url, "smol", conc, args)
        for _ in range(args.rounds):
            for conc in (1, args.parallel):
                runs["direct"].setdefault(conc, []).append(_load(engine_url, "smol", conc, args))
                before = compare.cpu_snapshot(front.pid)
                result = _load(front_url, "smol", conc, args)
                after = compare.cpu_snapshot(front.pid)
                result["daemon_cpu_ms_per_token"] = round(
                    (after["server"] - before["server"]) * 1000
                    / max(result["completion_tokens"], 1), 4
                )  # fmt: skip
                runs["mullama"].setdefault(conc, []).append(result)
    finally:
        compare.stop(front)
        compare.stop(engine)
    where = (f"engine on CPU {sorted(engine_cpus)}, Mullama and the client on {sorted(front_cpus)}"
             if split else "everything on every CPU")  # fmt: skip
    print(f"{args.rounds} rounds; {where}")
    print("| concurrency | direct tok/s | through Mullama tok/s | ratio | direct TTFT p50 ms "
          "| through Mullama TTFT p50 ms | added ms | daemon CPU ms/token |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    med = statistics.median
    for conc in (1, args.parallel):
        ds, ms = runs["direct"][conc], runs["mullama"][conc]
        ratio = med(m["tok_per_s"] / d["tok_per_s"] for d, m in zip(ds, ms, strict=True))
        added = med(m["ttft_p50_ms"] - d["ttft_p50_ms"] for d, m in zip(ds, ms, strict=True))
        print(
            f"| {conc} | {med(d['tok_per_s'] for d in ds):.1f} | "
            f"{med(m['tok_per_s'] for m in ms):.1f} | {ratio:.3f} | "
            f"{med(d['ttft_p50_ms'] for d in ds):.1f} | {med(m['ttft_p50_ms'] for m in ms):.1f} | "
            f"{added:+.1f} | {med(m['daemon_cpu_ms_per_token'] for m in ms):.3f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
