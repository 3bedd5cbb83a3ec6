"""Conversations across a restart: the first turn after a restart, with the saved sessions
(--session-disk) against the same turn recomputed by a daemon without them.

    .venv/bin/python benchmarks/sessions_restart.py [--conversations 4]

Each conversation (a shared system prompt and its own ~1,000-token document, as in
multiturn.py) takes one turn on a Mullama with a fresh cache dir; the daemon stops
(SIGTERM, which writes the sessions) and starts again on the same cache dir; then each
conversation's next turn is timed (time to first token, streamed, one at a time). The
same next turns are timed on a daemon whose cache dir has no sessions. Prints both
TTFTs and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare import free_port, mullama_cmd, stop, wait_ready  # noqa: E402
from multiturn import NAME, texts  # noqa: E402


def serve(cache: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # mullama_cmd turns sessions off (benchmarks start cold); the last flag wins.
    cmd = mullama_cmd(port, "--cache-dir", str(cache), "--parallel", "2",
                      "--context-size", "4096", *extra)  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


def turn(client: httpx.Client, url: str, messages: list[dict]) -> tuple[float, str]:
    body = {"model": NAME, "messages": messages, "max_tokens": 16, "temperature": 0,
            "stream": True}  # fmt: skip
    t0 = time.perf_counter()
    first, text = None, []
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for ch in json.loads(line[6:]).get("choices") or []:
                    piece = (ch.get("delta") or {}).get("content")
                    if piece:
                        first = first or time.perf_counter()
                        text.append(piece)
    return (first or time.perf_counter()) - t0, "".join(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conversations", type=int, default=4)
    args = p.parse_args(argv)
    system, docs = texts(int(time.time()), args.conversations)
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": d}] for d in docs]
    warm_dir, cold_dir = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    with httpx.Client(timeout=600) as client:
        proc, url = serve(warm_dir, "--session-disk", "1GiB")
        try:
            for messages in chats:
                _, answer = turn(client, url, messages)
                messages += [{"role": "assistant", "content": answer},
                             {"role": "user", "content": "Thanks. And the next point?"}]  # fmt: skip
        finally:
            stop(proc)  # SIGTERM: the sessions are written
        results = {}
        for name, cache, extra in (("restored", warm_dir, ("--session-disk", "1GiB")),
                                   ("recomputed", cold_dir, ())):  # fmt: skip
            proc, url = serve(cache, *extra)
            try:
                turn(client, url, [{"role": "user", "content": "warm-up"}])
                results[name] = [turn(client, url, m) for m in chats]
            finally:
                stop(proc)
    restored = [t for t, _ in results["restored"]]
    recomputed = [t for t, _ in results["recomputed"]]
    same = sum(
        a[1] == b[1] for a, b in zip(results["restored"], results["recomputed"], strict=True)
    )
    for (_, a), (_, b) in zip(results["restored"], results["recomputed"], strict=True):
        if a != b:
            print(f"differs: restored {a!r} / recomputed {b!r}")
    print(f"{args.conversations} conversations, next turn after a restart, TTFT (s):")
    print("| | mean | each |")
    print("| --- | --- | --- |")
    for name, values in (("sessions restored", restored), ("recomputed", recomputed)):
        print(f"| {name} | {statistics.mean(values):.3f} | "
              f"{', '.join(f'{v:.3f}' for v in values)} |")  # fmt: skip
    print(f"\nrecomputed / restored: {statistics.mean(recomputed) / statistics.mean(restored):.1f}x; "
          f"same answers: {same} of {len(chats)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
