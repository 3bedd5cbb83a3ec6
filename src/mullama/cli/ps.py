"""``mullama ps``: the models a running daemon has loaded."""

from __future__ import annotations

import argparse
import os
import sys

import httpx


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ps", help="list the models a running daemon has loaded")
    p.add_argument(
        "--host",
        default=os.environ.get("MULLAMA_HOST", "http://127.0.0.1:8080"),
        help="daemon URL [env MULLAMA_HOST]",
    )
    p.add_argument("--all", action="store_true", help="also list models that are not loaded")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = "/api/models" if args.all else "/api/ps"
    headers = {}
    if key := os.environ.get("MULLAMA_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    try:
        resp = httpx.get(args.host.rstrip("/") + path, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"mullama: cannot reach the daemon at {args.host}: {exc}", file=sys.stderr)
        return 1
    if resp.status_code != 200:
        print(
            f"mullama: the daemon answered {resp.status_code}: {resp.text[:200]}", file=sys.stderr
        )
        return 1
    rows = [("NAME", "LOADED", "PINNED", "PARALLEL", "ACTIVE", "QUEUED", "MEMORY", "EXPIRES")]
    for m in resp.json()["models"]:
        rows.append(
            (
                m["name"],
                "yes" if m.get("loaded", True) else "no",
                "yes" if m.get("pinned") else "no",
                str(m.get("parallel", "")),
                str(m.get("active_sequences", "")),
                str(m.get("queued_sequences", "")),
                f"{(m.get('memory_estimate') or 0) / 2**20:.0f} MiB",
                "never" if m.get("pinned") else str(m.get("expires_at") or "-"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
