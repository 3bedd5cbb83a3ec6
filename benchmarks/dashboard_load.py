"""What an open dashboard costs a busy daemon: decode tok/s at concurrency 8 with the web
UI's dashboard open in a real browser, with only its polls (no browser), and closed.

    .venv/bin/python benchmarks/dashboard_load.py [--rounds 3] [--requests 32]

One Mullama daemon (``--parallel 8``), the load generator of compare.py at concurrency 8
(128-token answers at temperature 0). The three cases are run in turn, ``--rounds`` times,
so drift on a shared machine hurts each alike:

- **closed**: no dashboard;
- **polls**: what the daemon sees of an open dashboard, without a browser: GET
  /api/system/status every 2 s and /v1/models every 10 s (the page's own rates);
- **open**: Debian's Chromium (headless, through Playwright) showing /ui/dashboard. On
  this machine the browser shares the daemon's cores, which an operator's browser on
  another machine does not: this case is the upper bound of the cost.

Also prints the daemon's CPU per status answer. ``--out FILE`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
import loadgen  # noqa: E402
from compare import _cpu_seconds, free_port, mullama_cmd, stop, wait_ready  # noqa: E402

NAME = "smollm2:135m"


def load(url: str, args: argparse.Namespace) -> dict:
    ns = argparse.Namespace(url=url, model=NAME, concurrency=8, requests=args.requests,
                            max_tokens=128, temperature=0.0, timeout=600.0)  # fmt: skip
    # In a thread of its own: Playwright's sync API holds this thread's event loop. The
    # page polls by itself meanwhile (the browser is another process).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, loadgen.run(ns)).result()


def polling(url: str, stop_flag: threading.Event) -> None:
    with httpx.Client(timeout=30) as client:
        n = 0
        while not stop_flag.is_set():
            if n % 5 == 0:
                client.get(url + "/v1/models")
            client.get(url + "/api/system/status")
            n += 1
            stop_flag.wait(2.0)


def status_cpu(url: str, pid: int, n: int = 200) -> float:
    """Daemon CPU ms per /api/system/status answer, on an idle daemon."""
    with httpx.Client(timeout=30) as client:
        client.get(url + "/api/system/status")
        before = _cpu_seconds(pid)
        for _ in range(n):
            client.get(url + "/api/system/status")
        return (_cpu_seconds(pid) - before) * 1000 / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from tests.browser import ARGS, chromium_path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(f"/tmp/bench-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(mullama_cmd(port, "--parallel", "8"), stdout=log, stderr=log)
    runs: dict[str, list[float]] = {"closed": [], "polls": [], "open": []}
    try:
        wait_ready(url, proc)
        per_status = status_cpu(url, proc.pid)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=ARGS)
            for r in range(args.rounds):
                for case in runs:
                    page = None
                    flag = threading.Event()
                    poller = None
                    if case == "open":
                        page = browser.new_page()
                        page.goto(url + "/ui/dashboard")
                        page.wait_for_selector("#models tbody tr")
                    elif case == "polls":
                        poller = threading.Thread(target=polling, args=(url, flag))
                        poller.start()
                    result = load(url, args)
                    if page is not None:
                        assert page.inner_text("#daemon-status") == "ready"
                        page.close()
                    flag.set()
                    if poller is not None:
                        poller.join()
                    runs[case].append(result["tok_per_s"])
                    print(f"round {r + 1} {case:6s} {result['tok_per_s']:8.1f} tok/s "
                          f"(errors {result['errors']})", flush=True)  # fmt: skip
                    time.sleep(1)
            browser.close()
    finally:
        stop(proc)
        log.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    print()
    print("| dashboard | tok/s at c=8 (median of rounds) | vs closed |")
    print("|---|---:|---:|")
    for k in runs:
        print(f"| {k} | {med[k]:.1f} | {med[k] / med['closed']:.3f} |")
    print(f"\ndaemon CPU per /api/system/status answer: {per_status:.2f} ms "
          f"(every 2 s: {per_status / 20:.3f} % of one core)")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"runs": runs, "median": med,
                                        "status_cpu_ms": per_status}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
