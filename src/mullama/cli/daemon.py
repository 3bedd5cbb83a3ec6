"""``mullama daemon status|stop``: JSON over HTTP on the control socket."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ..config import load_settings
from ..engine.cpushare import pid_alive

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_RUNNING = 3  # LSB: "program is not running"
STOP_GRACE = 30.0  # seconds to wait past the drain timeout for workers to stop


def _err(msg: str) -> None:
    print(f"mullama: {msg}", file=sys.stderr)


def _socket(args: argparse.Namespace) -> Path | None:
    from ..daemon.control import socket_path

    values: dict[str, Any] = {}
    if args.socket is not None:
        values["socket"] = args.socket
    if args.config is not None:
        values["config"] = args.config
    return socket_path(load_settings(values).socket)


def _client(path: Path) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(path)), base_url="http://localhost", timeout=30
    )


def _call(path: Path, method: str, url: str, **kw: Any) -> httpx.Response | None:
    """The response, or None (with a message) when no daemon answers on the socket."""
    if not path.exists():
        _err(f"no daemon is running (control socket {path} does not exist)")
        return None
    try:
        with _client(path) as client:
            return client.request(method, url, **kw)
    except (httpx.ConnectError, httpx.RemoteProtocolError):
        _err(f"no daemon is running (nothing answers on control socket {path})")
        return None


def cmd_status(args: argparse.Namespace) -> int:
    path = _socket(args)
    if path is None:
        _err("the control socket is turned off (--socket none)")
        return EXIT_ERROR
    resp = _call(path, "GET", "/api/daemon/status")
    if resp is None:
        return EXIT_NOT_RUNNING
    if resp.status_code != 200:
        _err(f"daemon answered {resp.status_code}: {resp.text}")
        return EXIT_ERROR
    info = resp.json()
    if args.json:
        print(resp.text)
        return EXIT_OK
    print(f"mullama {info['version']} (pid {info['pid']}): {info['status']}")
    print(f"  listening: {info['http']}  control socket: {info.get('socket') or path}")
    print(f"  models: {', '.join(info['models'])}")
    print(f"  uptime: {info['uptime_secs']:.0f} s  requests in flight: {info['in_flight']}")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    path = _socket(args)
    if path is None:
        _err("the control socket is turned off (--socket none); send SIGTERM instead")
        return EXIT_ERROR
    body = {"timeout": args.timeout, "force": args.force}
    resp = _call(path, "POST", "/api/daemon/stop", json=body)
    if resp is None:
        return EXIT_NOT_RUNNING
    if resp.status_code != 202:
        _err(f"daemon refused to stop ({resp.status_code}): {resp.text}")
        return EXIT_ERROR
    pid = int(resp.json()["pid"])
    wait = (args.timeout if args.timeout is not None else 30.0) + STOP_GRACE
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not pid_alive(pid) or not path.exists():
            print(f"mullama daemon (pid {pid}) stopped")
            return EXIT_OK
        time.sleep(0.1)
    _err(f"daemon (pid {pid}) is still stopping after {wait:g} s")
    return EXIT_ERROR


def add_daemon_commands(sub: argparse._SubParsersAction) -> None:
    daemon = sub.add_parser("daemon", help="control a running daemon over its control socket")
    dsub = daemon.add_subparsers(dest="daemon_command", required=True)
    status = dsub.add_parser("status", help="show whether a daemon runs and what it serves")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(func=cmd_status)
    stop = dsub.add_parser("stop", help="drain and stop the daemon")
    stop.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds requests in flight may take to finish (default: its --shutdown-timeout)",
    )
    stop.add_argument("--force", action="store_true", help="abort requests and stop at once")
    stop.set_defaults(func=cmd_stop)
    for p in (status, stop):
        p.add_argument("--socket", default=None, help="control socket (default: as serve)")
        p.add_argument("--config", default=None, help="config file to read the socket from")
