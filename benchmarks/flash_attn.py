"""Flash attention on and off, on this machine's CPU: the time of one decode step (each of
B sequences adds one token at position L) and the prompt rate, same model, same context,
in one process. The numbers behind ``--flash-attn``.

    .venv/bin/python benchmarks/flash_attn.py [--batch 1,4,8] [--positions 32,256,1024,2048]

Each cell is the median of 8 steps after 2 warm-up steps, in milliseconds; the prompt
rate is the first sequence's prefill of L tokens. Each cell runs on, then off, so a
drift in the machine's speed hits both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mullama.engine.llama import Batch, Context, ContextConfig, Model, init_backend  # noqa: E402
from mullama.models.registry import embedded_model_path  # noqa: E402


def cell(ctx: Context, batch: Batch, n_seq: int, pos: int, reps: int = 10) -> tuple[float, float]:
    """(decode step ms, prompt tokens/s) with ``n_seq`` sequences of ``pos`` tokens."""
    ctx.clear()
    prompt = [(7 * i + 11) % 20000 + 100 for i in range(pos)]
    started = time.perf_counter()
    for s in range(n_seq):
        for i in range(0, pos, ctx.n_batch):
            batch.clear()
            chunk = prompt[i : i + ctx.n_batch]
            batch.add_many(chunk, i, s, i + len(chunk) == pos)
            assert ctx.decode(batch) == 0
        if s == 0:
            rate = pos / (time.perf_counter() - started)
    steps = []
    for rep in range(reps):
        batch.clear()
        for s in range(n_seq):
            batch.add(100 + rep, pos, s, True)
        t = time.perf_counter()
        assert ctx.decode(batch) == 0
        steps.append(time.perf_counter() - t)
        for s in range(n_seq):
            ctx.seq_rm(s, pos, -1)
    return 1000 * statistics.median(steps[2:]), rate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", default="1,4,8", help="sequences per step")
    p.add_argument("--positions", default="32,128,256,512,1024,2048")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.batch.split(",")]
    positions = [int(x) for x in args.positions.split(",")]
    init_backend()
    model = Model(str(embedded_model_path()))
    n_seq = max(sizes)
    per_seq = max(4096, 1 << (max(positions) + 1).bit_length())
    ctxs = {
        fa: Context(
            model,
            ContextConfig(
                n_ctx=per_seq * n_seq,
                n_batch=2048,
                n_seq_max=n_seq,
                n_threads=args.threads,
                flash_attn=fa,
            ),
        )  # fmt: skip
        for fa in ("on", "off")
    }
    batch = Batch(2048)
    print(f"SmolLM2-135M Q4_1, {args.threads} threads, one KV stream of {per_seq} per sequence\n")
    print(
        "| sequences | position | step, FA on (ms) | step, FA off (ms) | on / off "
        "| prompt tok/s on | off |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for b in sizes:
        for pos in positions:
            (on, r_on), (off, r_off) = (cell(ctxs[fa], batch, b, pos) for fa in ("on", "off"))
            print(f"| {b} | {pos} | {on:.1f} | {off:.1f} | {on / off:.2f} | {r_on:.0f} "
                  f"| {r_off:.0f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
