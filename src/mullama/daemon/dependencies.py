"""What the daemon depends on, probed in the background so /health answers at once from
the last results, never by waiting on a dead dependency: the model store's disk (free
space), Redis when rate limits live there, the OTLP collector when traces go to one, and
each model's worker. All of them are optional for serving: one that is down makes
/health say ``degraded``, and requests keep being served."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PERIOD_S = 5.0  # between two rounds of probes
TIMEOUT_S = 1.0  # one probe's limit
WORKER_TIMEOUT_S = 2.0  # a loaded worker's reader thread answers a ping within this
MIN_FREE_BYTES = 1 << 30  # the store's disk is degraded below 1 GiB free


@dataclass
class Result:
    status: str = "unknown"  # ok | degraded | down | unknown (not probed yet)
    latency_ms: float | None = None
    detail: str | None = None
    checked_at: float = 0.0


async def _ping_tcp(host: str, port: int, payload: bytes | None) -> str | None:
    """Connect (and send ``payload``, read a reply); None when it answered."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT_S)
    try:
        if payload is not None:
            writer.write(payload)
            await writer.drain()
            reply = await asyncio.wait_for(reader.readline(), TIMEOUT_S)
            if not reply:
                return "closed the connection"
        return None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class Dependencies:
    def __init__(self, settings: Any, manager: Any) -> None:
        self.manager = manager
        self.store = Path(settings.cache_dir).expanduser()
        self.checks: dict[str, Any] = {"model_store": self._disk}
        self.results: dict[str, Result] = {"model_store": Result()}
        self._redis: dict[str, tuple[str, int]] = {}
        # Redis for rate limits and the response cache: one entry when both are one server.
        for name, storage in (("redis", settings.rate_limit_storage),
                              ("redis_cache", settings.cache_url or "")):  # fmt: skip
            if not storage.startswith(("redis://", "rediss://")):
                continue
            url = urlsplit(storage)
            where = (url.hostname or "127.0.0.1", url.port or 6379)
            if where in self._redis.values():
                continue
            self._redis[name] = where
            self.checks[name] = functools.partial(self._redis_ping, where)
            self.results[name] = Result()
        if settings.otlp_endpoint:
            url = urlsplit(settings.otlp_endpoint)
            self._otlp = (url.hostname or "127.0.0.1", url.port or 4318)
            self.checks["otlp_collector"] = self._otlp_connect
            self.results["otlp_collector"] = Result()

    async def run(self) -> None:
        """Probe every PERIOD_S seconds until cancelled."""
        while True:
            await self.probe_all()
            await asyncio.sleep(PERIOD_S)

    async def probe_all(self) -> None:
        checks = dict(self.checks)
        for client in self.manager.clients():  # loaded workers: stopped or hung ones are down
            if client.alive:
                checks[f"model:{client.name}"] = functools.partial(self._worker_ping, client)
        await asyncio.gather(*(self._probe(name, check) for name, check in checks.items()))

    async def _worker_ping(self, client: Any) -> tuple[str, str | None]:
        try:
            await client.ping(WORKER_TIMEOUT_S)
        except TimeoutError:
            if not client.alive:  # it went away meanwhile: an unload, not a fault
                return "not_loaded", None
            return "down", f"the worker (pid {client.pid}) did not answer in {WORKER_TIMEOUT_S:g} s"
        except Exception as exc:  # noqa: BLE001 - unloaded or crashed meanwhile
            return "not_loaded", str(exc)
        return "ok", None

    async def _probe(self, name: str, check: Any) -> None:
        started = time.perf_counter()
        try:
            status, detail = await check()
        except (OSError, TimeoutError) as exc:
            status, detail = "down", str(exc) or type(exc).__name__
        self.results[name] = Result(status, round((time.perf_counter() - started) * 1000, 3),
                                    detail, time.time())  # fmt: skip

    async def _disk(self) -> tuple[str, str | None]:
        path = self.store if self.store.exists() else self.store.parent
        usage = await asyncio.to_thread(shutil.disk_usage, path)
        free = f"{usage.free} bytes free"
        return ("ok" if usage.free >= MIN_FREE_BYTES else "degraded"), free

    async def _redis_ping(self, where: tuple[str, int]) -> tuple[str, str | None]:
        problem = await _ping_tcp(*where, b"PING\r\n")
        return ("down", problem) if problem else ("ok", None)

    async def _otlp_connect(self) -> tuple[str, str | None]:
        problem = await _ping_tcp(*self._otlp, None)
        return ("down", problem) if problem else ("ok", None)

    def snapshot(self) -> dict[str, Any]:
        """The last results, with each loaded model's worker."""
        now = time.time()
        out: dict[str, Any] = {
            name: {"status": r.status, "latency_ms": r.latency_ms, "detail": r.detail,
                   "age_s": round(now - r.checked_at, 3) if r.checked_at else None}
            for name, r in self.results.items()
        }  # fmt: skip
        for client in self.manager.clients():
            key = f"model:{client.name}"
            if not client.alive:
                out[key] = {"status": "not_loaded"}
            elif key not in out:
                out[key] = {"status": "ok"}  # loaded since the last round of probes
        return out

    def degraded(self) -> list[str]:
        alive = {f"model:{c.name}" for c in self.manager.clients() if c.alive}
        return sorted(
            n for n, r in self.results.items()
            if r.status in ("down", "degraded") and (not n.startswith("model:") or n in alive)
        )  # fmt: skip
