"""What Mullama in front of a remote engine costs: streaming through ``--remote`` vs
straight to llama.cpp's own llama-server, same engine, same run.

    .venv/bin/python benchmarks/remote.py [--parallel 8] [--max-tokens 128] [--rounds 3]

One llama-server (the engine, ``-np N``, all cores) and one Mullama daemon with
``--remote smol=<llama-server>/v1``. Each round runs the load generator (streamed
/v1/completions, temperature 0, ignore_eos) at concurrency 1 and N straight to the engine,
then through Mullama; the best round of each is kept, so a noisy neighbour hurts both
alike. Prints tokens/s and TTFT for both, their ratio and difference, and the CPU time
the Mullama daemon spent per streamed token. ``--out FILE`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
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
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args(argv)
    bin_dir = compare.build_anchors()
    engine_port, front_port = compare.free_port(), compare.free_port()
    engine_url = f"http://127.0.0.1:{engine_port}"
    front_url = f"http://127.0.0.1:{front_port}"
    env = {**os.environ, "LD_LIBRARY_PATH": str(bin_dir)}
    engine = subprocess.Popen(
        [str(bin_dir / "llama-server"), "-m", compare.model_path(), "--port", str(engine_port),
         "-np", str(args.parallel), "-c", str(args.parallel * 1024), "-t", str(os.cpu_count()),
         "--log-disable"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    front = subprocess.Popen(
        compare.mullama_cmd(front_port, "--remote", f"smol={engine_url}/v1",
                            "--remote-opt", f"smol:max_inflight={args.parallel}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    runs: dict[str, dict[int, list[dict]]] = {"direct": {}, "mullama": {}}
    try:
        compare.wait_ready(engine_url, engine)
        compare.wait_ready(front_url, front)
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
    best = {side: {c: compare.best(rs) for c, rs in by.items()} for side, by in runs.items()}
    print("| concurrency | direct tok/s | through Mullama tok/s | ratio | direct TTFT p50 ms "
          "| through Mullama TTFT p50 ms | added ms | daemon CPU ms/token |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for conc in (1, args.parallel):
        d, m = best["direct"][conc], best["mullama"][conc]
        print(
            f"| {conc} | {d['tok_per_s']} | {m['tok_per_s']} | "
            f"{m['tok_per_s'] / d['tok_per_s']:.3f} | {d['ttft_p50_ms']} | {m['ttft_p50_ms']} | "
            f"{m['ttft_p50_ms'] - d['ttft_p50_ms']:+.1f} | {m['daemon_cpu_ms_per_token']} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
