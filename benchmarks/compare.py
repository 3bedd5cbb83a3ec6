"""Mullama vs llama.cpp's own llama-server and llama-batched-bench, in one run, same model.

    .venv/bin/python benchmarks/compare.py [--parallel 8] [--max-tokens 128] [--rounds 2]

Builds the anchors with ../shared/tools/build-llama-anchors.sh (cached after the first
time), then for each server: start it, run the load generator at concurrency 1 and N,
stop it. Servers are measured alternately, ``--rounds`` times, and the best of the rounds
is kept for each, so a noisy neighbour hurts both alike. Prints a Markdown table with the
ratios; ``--out FILE`` also writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import loadgen  # noqa: E402

AMX_OFF = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_path() -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from mullama.models.registry import embedded_model_path

    return str(embedded_model_path())


def build_anchors() -> Path:
    script = ROOT.parent / "shared" / "tools" / "build-llama-anchors.sh"
    # Same CPU flags as our llama-cpp-python build: native, without AMX (see bootstrap.sh).
    env = {**os.environ, "CFLAGS": AMX_OFF, "CXXFLAGS": AMX_OFF}
    out = subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def mullama_cmd(port: int, *extra: str) -> list[str]:
    """``mullama serve`` on ``port`` for a benchmark: quiet, no control socket."""
    return [
        sys.executable, "-m", "mullama", "serve", "--http-port", str(port),
        "--log-level", "warning", "--socket", "none", "--session-disk", "0", *extra,
    ]  # fmt: skip


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not become ready")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of a process (all its threads) or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def cpu_snapshot(pid: int) -> dict[str, float]:
    """CPU seconds so far of a server process (``server``: llama-server, or Mullama's
    daemon: HTTP, SSE, the API layer) and of its child processes (``worker``: Mullama's
    engine process; ``worker_main``: the worker's main thread, which runs the Python
    scheduler and takes its share of llama_decode; the rest are llama.cpp's threads)."""
    snap = {"server": _cpu_seconds(pid), "worker": 0.0, "worker_main": 0.0}
    for child in _children(pid):
        snap["worker"] += _cpu_seconds(child)
        snap["worker_main"] += _cpu_seconds(child, child)
    snap["client"] = time.process_time()  # this process: the load generator
    return snap


def cpu_per_token(before: dict[str, float], after: dict[str, float], tokens: int) -> dict:
    """CPU milliseconds per generated token, by side."""
    return {k: round((after[k] - before[k]) * 1000 / max(tokens, 1), 3) for k in before}


def measure(
    cmd: list[str], port: int, model: str, args: argparse.Namespace, env: dict | None = None
) -> dict:
    log = open(f"/tmp/bench-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        out = {}
        for conc in (1, args.parallel):
            requests = args.requests if conc > 1 else max(4, args.requests // 4)
            ns = argparse.Namespace(
                url=url,
                model=model,
                concurrency=conc,
                requests=requests,
                max_tokens=args.max_tokens,
                temperature=0.0,
                timeout=600.0,
            )
            before = cpu_snapshot(proc.pid)
            result = loadgen.asyncio.run(loadgen.run(ns))
            result["cpu_ms_per_token"] = cpu_per_token(
                before, cpu_snapshot(proc.pid), result["completion_tokens"]
            )
            out[conc] = result
        return out
    finally:
        stop(proc)
        log.close()


def batched_bench(bin_dir: Path, model: str, args: argparse.Namespace) -> dict[int, float]:
    cmd = [
        str(bin_dir / "llama-batched-bench"),
        "-m",
        model,
        "-c",
        str(args.parallel * 1024),
        "-b",
        "512",
        "-ub",
        "512",
        "-npp",
        "32",
        "-ntg",
        str(args.max_tokens),
        "-npl",
        f"1,{args.parallel}",
        "-t",
        str(os.cpu_count()),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[int, float] = {}
    # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and re.fullmatch(r"\d+", cells[2] or ""):
            result[int(cells[2])] = float(cells[7])
    return result


def best(runs: list[dict]) -> dict:
    return max(runs, key=lambda r: r["tok_per_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--baseline", help="also measure Mullama from this src/ folder")
    p.add_argument("--out")
    args = p.parse_args(argv)

    bin_dir = build_anchors()
    model = model_path()
    name = "smollm2:135m"
    threads = str(os.cpu_count())
    ctx_per_seq = 2048
    runs: dict[str, list[dict]] = {"mullama": [], "llama-server": []}
    if args.baseline:
        runs["baseline"] = []

    def mullama_serve(port: int) -> list[str]:
        return mullama_cmd(port, "--parallel", str(args.parallel), "--context-size",
                           str(ctx_per_seq), "--threads", threads)  # fmt: skip

    for _ in range(args.rounds):
        port = free_port()
        runs["mullama"].append(measure(mullama_serve(port), port, name, args))
        if args.baseline:
            # Another checkout's code (e.g. `git worktree add /tmp/base main`), same venv.
            env = {**os.environ, "PYTHONPATH": str(Path(args.baseline).resolve())}
            port = free_port()
            runs["baseline"].append(measure(mullama_serve(port), port, name, args, env))
        port = free_port()
        runs["llama-server"].append(
            measure(
                [
                    str(bin_dir / "llama-server"),
                    "-m",
                    model,
                    "--port",
                    str(port),
                    "--parallel",
                    str(args.parallel),
                    "-c",
                    str(ctx_per_seq * args.parallel),
                    "-t",
                    threads,
                    "-tb",
                    threads,
                    "--alias",
                    name,
                    "--log-disable",
                ],
                port,
                name,
                args,
            )
        )
    bench = batched_bench(bin_dir, model, args)

    rows = []
    for conc in (1, args.parallel):
        m = best([r[conc] for r in runs["mullama"]])
        s = best([r[conc] for r in runs["llama-server"]])
        rows.append((conc, m, s, bench.get(conc)))
    print(
        f"\nModel {name} (SmolLM2-135M-Instruct Q4_1), {os.cpu_count()} threads, "
        f"max_tokens {args.max_tokens}, temperature 0, best of {args.rounds} rounds\n"
    )
    print(
        "| concurrency | Mullama tok/s | llama-server tok/s | batched-bench tok/s "
        "| Mullama / llama-server | Mullama / batched-bench | TTFT p50 Mullama / llama-server (ms) "
        "| errors |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for conc, m, s, b in rows:
        bb = f"{b:.1f}" if b else "n/a"
        ratio_b = f"{m['tok_per_s'] / b:.2f}" if b else "n/a"
        print(
            f"| {conc} | {m['tok_per_s']:.1f} | {s['tok_per_s']:.1f} | {bb} | "
            f"{m['tok_per_s'] / s['tok_per_s']:.2f} | {ratio_b} | "
            f"{m['ttft_p50_ms']:.0f} / {s['ttft_p50_ms']:.0f} | {m['errors']} / {s['errors']} |"
        )
    print("\nEach round, tok/s (Mullama / llama-server, measured one after the other):\n")
    for conc in (1, args.parallel):
        pairs = list(zip(runs["mullama"], runs["llama-server"], strict=True))
        cells = [f"{m[conc]['tok_per_s']:.1f} / {s[conc]['tok_per_s']:.1f}" for m, s in pairs]
        ratio = statistics.median(m[conc]["tok_per_s"] / s[conc]["tok_per_s"] for m, s in pairs)
        print(f"- c={conc}: {', '.join(cells)}; median of the rounds' ratios {ratio:.2f}")
    if args.baseline:
        print(f"\nMullama / baseline ({args.baseline}):")
        for conc in (1, args.parallel):
            m = best([r[conc] for r in runs["mullama"]])
            b = best([r[conc] for r in runs["baseline"]])
            print(
                f"- c={conc}: {m['tok_per_s']:.1f} / {b['tok_per_s']:.1f} tok/s = "
                f"{m['tok_per_s'] / b['tok_per_s']:.2f}, TTFT p50 {m['ttft_p50_ms']:.0f} / "
                f"{b['ttft_p50_ms']:.0f} ms"
            )
    print(
        "\nCPU ms per streamed token (of the best round; server = llama-server, or Mullama's "
        "daemon process; worker = Mullama's engine process, worker_main its main thread; "
        "client = the load generator):\n"
    )
    print("| concurrency | server | daemon or server | worker | worker main thread | client |")
    print("| --- | --- | --- | --- | --- | --- |")
    for conc in (1, args.parallel):
        for label in runs:
            c = best([r[conc] for r in runs[label]])["cpu_ms_per_token"]
            print(
                f"| {conc} | {label} | {c['server']:.3f} | {c['worker']:.3f} | "
                f"{c['worker_main']:.3f} | {c['client']:.3f} |"
            )
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs, "batched_bench": bench}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
