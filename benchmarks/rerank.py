"""Reranking 100 documents in one request: Mullama against llama.cpp's llama-server
--rerank, the same reranker file, in one run.

    .venv/bin/python benchmarks/rerank.py [--rounds 3] [--documents 100] [--layers 4]

The reranker is the test cross-encoder (benchmarks/synthetic/make_reranker.py: a
random-weight BERT with a rank head; speed does not depend on the weights' values). Each
round sends the same ``/v1/rerank`` request (one query, ``--documents`` passages of about
40 words) to each server in turn, alternating the order by round, and times it from the
request to the whole answer; the best round of each is kept. Both servers run one
sequence's worth of context per document batch as they do by default, on the same cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare import build_anchors, free_port, mullama_cmd, stop, wait_ready  # noqa: E402

WORDS = ("city river market school garden capital history music bridge train doctor "
         "winter harbour museum forest coffee engine island letter mountain").split()  # fmt: skip


def _make_reranker(out: Path, layers: int) -> Path:
    spec = importlib.util.spec_from_file_location(
        "make_reranker", ROOT / "benchmarks" / "synthetic" / "make_reranker.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_reranker(out, layers=layers)


def _documents(n: int) -> list[str]:
    rng = random.Random(7)
    return [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(n)]


def _once(url: str, body: dict) -> tuple[float, list[int]]:
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/rerank", json=body, timeout=600)
    wall = time.perf_counter() - t0
    r.raise_for_status()
    return wall, [x["index"] for x in r.json()["results"]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--documents", type=int, default=100)
    p.add_argument("--layers", type=int, default=4)
    args = p.parse_args(argv)
    bin_dir = build_anchors()
    model = _make_reranker(Path(tempfile.mkdtemp()) / "reranker.gguf", args.layers)
    body = {"query": "which passage is about the capital city and its river",
            "documents": _documents(args.documents), "model": "rr"}  # fmt: skip
    ports = {"mullama": free_port(), "llama-server": free_port()}
    cmds = {
        "mullama": mullama_cmd(ports["mullama"], "--model", f"rr={model}"),
        "llama-server": [str(bin_dir / "llama-server"), "-m", str(model), "--rerank",
                         "--port", str(ports["llama-server"]), "--log-disable"],  # fmt: skip
    }
    best: dict[str, float] = {}
    orders: dict[str, list[int]] = {}
    procs = {}
    try:
        for name, cmd in cmds.items():
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)  # fmt: skip
            wait_ready(f"http://127.0.0.1:{ports[name]}", procs[name])
            _once(f"http://127.0.0.1:{ports[name]}", body)  # warm-up (loads the model)
        names = list(cmds)
        for round_no in range(args.rounds):
            for name in names if round_no % 2 == 0 else names[::-1]:
                wall, orders[name] = _once(f"http://127.0.0.1:{ports[name]}", body)
                best[name] = min(best.get(name, wall), wall)
                print(f"{name}: {wall * 1000:.0f} ms", flush=True)
    finally:
        for proc in procs.values():
            stop(proc)
    ours, theirs = best["mullama"], best["llama-server"]
    print(f"\n{args.documents} documents in one request, best of {args.rounds}:")
    print("| server | ms | documents/s |\n| --- | --- | --- |")
    for name in names:
        print(f"| {name} | {best[name] * 1000:.0f} | {args.documents / best[name]:.0f} |")
    print(f"\nMullama / llama-server speed: {theirs / ours:.2f}x; same order: "
          f"{orders['mullama'] == orders['llama-server']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
