"""Which models are loaded: on-demand loading, keep-alive, LRU eviction under a memory
budget and a count limit, bounded per-model queues, crash back-off.

Every generation goes through ``generate``/``embed`` here, which hold a lease on the
model for the request's whole life (streaming included); a model with leases is never
evicted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..config import Settings
from ..engine.client import WorkerClient
from ..engine.cpu import CpuBudget, detect, format_cpu_list
from ..engine.cpushare import share_dir
from ..engine.protocol import ChunkStream, Embeddings, GenerateRequest, WorkerSpec
from ..errors import (
    ClientError,
    EngineCrashed,
    ModelNotFound,
    MullamaError,
    ServerError,
    Unavailable,
)
from .aliases import close_matches
from .budget import estimate_bytes, fmt_bytes, parse_budget, parse_keep_alive
from .gguf import GGUFInfo, read_gguf
from .options import ModelOptions, parse_model_opts
from .registry import EMBEDDED_NAME, ModelRef, resolve
from .store import sha256_file

log = logging.getLogger(__name__)


class InsufficientMemory(ServerError):
    status = 507
    code = "insufficient_memory"


class ModelEntry:
    """A servable model: its name, file and (lazily, cached) GGUF metadata and digest."""

    def __init__(self, name: str, path: Path, ref: ModelRef | None = None) -> None:
        self.name = name
        self.path = path
        self.ref = ref  # a custom model's system prompt, template and default parameters
        stat = path.stat()
        self.size = stat.st_size
        self.modified = stat.st_mtime

    @cached_property
    def _gguf(self) -> GGUFInfo:
        return read_gguf(self.path)

    def gguf(self) -> GGUFInfo:
        return self._gguf

    @cached_property
    def _digest(self) -> str:
        return sha256_file(self.path).removeprefix("sha256:")

    def digest(self) -> str:
        return self._digest


@dataclass
class Slot:
    """A model the manager knows: configured at start-up or loaded on demand."""

    entry: ModelEntry
    client: WorkerClient
    opts: ModelOptions
    pinned: bool = False
    estimate: int = 0
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)
    keep_alive: float | None = 300.0  # seconds after the last request; None = forever
    base_keep_alive: float | None = 300.0  # the model's own, when a request gives none
    expires_at: float | None = None  # wall-clock time
    load_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    expiry: asyncio.TimerHandle | None = None
    loading: bool = False
    failures: int = 0
    retry_at: float = 0.0
    last_error: MullamaError | None = None
    seen_restarts: int = 0
    crash_times: list[float] = field(default_factory=list)

    @property
    def loaded(self) -> bool:
        return self.client.alive


class ModelManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.default_keep_alive = parse_keep_alive(settings.keep_alive)
        self.budget = parse_budget(settings.memory_budget)
        self.per_model = parse_model_opts(settings.model_opt)
        self._slots: dict[str, Slot] = {}
        self._changed = asyncio.Condition()
        self._observer: Any = None
        self.cpu: CpuBudget = detect()
        self.share_dir: str | None = None
        if settings.cpu_share != "off":
            cpus = format_cpu_list(self.cpu.allowed)
            self.share_dir = str(share_dir(cpus, settings.cpu_share, os.getpid()))
        log.info(
            "CPU budget: %s; busy models split it: %s",
            self.cpu.describe(),
            f"{settings.cpu_share} ({self.share_dir})" if self.share_dir else "off",
        )
        for spec in settings.model or [EMBEDDED_NAME]:
            ref = resolve(spec, cache_dir=settings.cache_dir)
            if ref.name in self._slots:
                raise ClientError(f"model name {ref.name!r} is given twice")
            self._add(ref, pinned=True)

    # ---- the set of models ------------------------------------------------------------

    def _add(self, ref: ModelRef, pinned: bool) -> Slot:
        opts = self.per_model.get(ref.name, ModelOptions()).with_defaults(self.settings)
        s = self.settings
        client = WorkerClient(
            WorkerSpec(
                name=ref.name,
                path=str(ref.path),
                parallel=opts.parallel,
                context_size=opts.context_size,
                batch_size=opts.batch_size,
                kv_unified=s.kv_unified,
                burst_wait_ms=s.burst_wait_ms,
                threads=opts.threads or self.cpu.threads,
                cpu_share_dir=self.share_dir,
                gpu_layers=opts.gpu_layers,
                log_level=s.log_level,
                log_format=s.log_format,
                log_file=s.log_file,
                load_timeout=s.load_timeout,
            )
        )
        if self._observer is not None:
            client.observer = self._observer
        keep = self.default_keep_alive
        if opts.keep_alive is not None:
            keep = parse_keep_alive(opts.keep_alive)
        pinned = pinned if opts.pinned is None else opts.pinned
        slot = Slot(
            entry=ModelEntry(ref.name, ref.path, ref),
            client=client,
            opts=opts,
            pinned=pinned,
            keep_alive=None if pinned else keep,
            base_keep_alive=None if pinned else keep,
        )
        self._slots[ref.name] = slot
        return slot

    def _slot(self, name: str | None) -> Slot:
        if not name:
            raise ClientError("you must provide a model parameter", param="model")
        slot = self._slots.get(name)
        if slot is not None:
            return slot
        # Any model in the store can be loaded on demand; file paths only from --model.
        if name.endswith(".gguf") or name.startswith(("/", ".", "~")) or "=" in name:
            raise self._not_found(name)
        try:
            ref = resolve(name, cache_dir=self.settings.cache_dir)
        except ModelNotFound:
            raise self._not_found(name) from None
        return self._add(ref, pinned=False)

    def _not_found(self, name: str) -> ModelNotFound:
        hint = close_matches(name, self._slots, cutoff=0.6)
        return ModelNotFound(f"The model '{name}' does not exist{hint}", param="model")

    def set_observer(self, observer: Any) -> None:
        """Engine events (accept, admit, tokens, load) of every model go to ``observer``."""
        self._observer = observer
        for slot in self._slots.values():
            slot.client.observer = observer

    @property
    def names(self) -> list[str]:
        return list(self._slots)

    def clients(self) -> list[WorkerClient]:
        return [s.client for s in self._slots.values()]

    def slots(self) -> list[Slot]:
        return list(self._slots.values())

    def entry(self, name: str | None) -> ModelEntry:
        return self._slot(name).entry

    def get(self, name: str | None) -> WorkerClient:
        return self._slot(name).client

    # ---- loading, budget, eviction ------------------------------------------------------

    def _estimate(self, slot: Slot) -> int:
        if not slot.estimate:
            o = slot.opts
            slot.estimate = estimate_bytes(
                slot.entry.gguf(), o.context_size * o.parallel, o.batch_size
            )
        return slot.estimate

    def _used(self, exclude: Slot | None = None) -> tuple[int, int]:
        loaded = [s for s in self._slots.values() if (s.loaded or s.loading) and s is not exclude]
        return sum(s.estimate for s in loaded), len(loaded)

    async def load(self, name: str | None, keep_alive: Any = None) -> float:
        """Make sure the model is loaded; returns the seconds spent loading (0 if it was)."""
        slot = self._slot(name)
        if keep_alive is not None:
            self._set_keep_alive(slot, keep_alive)
        if slot.loaded:
            return 0.0
        started = time.perf_counter()
        async with slot.load_lock:  # concurrent requests wait for this one load
            if slot.loaded:
                return 0.0
            now = time.monotonic()
            if slot.last_error is not None and now < slot.retry_at:
                raise _copy_error(slot.last_error, f" (retrying in {slot.retry_at - now:.0f}s)")
            self._check_crash_loop(slot)
            try:  # reads and checks the GGUF before any worker starts
                need = await asyncio.to_thread(self._estimate, slot)
            except MullamaError as exc:
                bad = ServerError(
                    f"model {slot.entry.name!r} cannot be loaded: {exc.message}",
                    code=exc.code,
                )
                self._record_failure(slot, bad)
                slot.client.observer.loaded(slot.entry.name, 0.0, bad)
                raise bad from exc
            await self._make_room(slot, need)  # sets slot.loading
            try:
                await slot.client.ensure_started()
            except MullamaError as exc:
                self._record_failure(slot, exc)
                raise
            finally:
                slot.loading = False
            slot.failures = 0
            slot.last_error = None
            slot.last_used = time.monotonic()
            self._schedule_expiry(slot)
        return time.perf_counter() - started

    def _check_crash_loop(self, slot: Slot) -> None:
        """A worker that crashed is restarted on the next request; one that keeps crashing
        (3 times within a minute) is restarted only after a growing pause."""
        restarts = slot.client.restarts
        if restarts == slot.seen_restarts:
            return
        now = time.monotonic()
        slot.crash_times = [t for t in slot.crash_times if now - t < 60]
        slot.crash_times.extend([now] * (restarts - slot.seen_restarts))
        slot.seen_restarts = restarts
        if len(slot.crash_times) >= 3:
            delay = min(2 ** (len(slot.crash_times) - 3), 60)
            self._record_failure(
                slot,
                EngineCrashed(
                    f"the engine for model {slot.entry.name!r} crashed "
                    f"{len(slot.crash_times)} times in the last minute"
                ),
                delay,
            )
            raise _copy_error(slot.last_error, f" (retrying in {delay}s)")  # type: ignore[arg-type]

    def _record_failure(self, slot: Slot, exc: MullamaError, delay: float | None = None) -> None:
        slot.failures += 1
        if delay is None:
            delay = min(2 ** (slot.failures - 1), 60)
        slot.retry_at = time.monotonic() + delay
        slot.last_error = exc
        log.error(
            "model %s failed to load (%d in a row; next try in %ds): %s",
            slot.entry.name,
            slot.failures,
            delay,
            exc.message,
        )

    async def _make_room(self, slot: Slot, need: int) -> None:
        if need > self.budget:
            raise InsufficientMemory(
                f"model {slot.entry.name!r} needs about {fmt_bytes(need)} (weights, KV cache "
                f"and buffers) but the memory budget is {fmt_bytes(self.budget)}; raise "
                "--memory-budget or lower its context size or parallel sequences"
            )
        deadline = time.monotonic() + self.settings.load_timeout
        async with self._changed:
            while True:
                used, count = self._used(exclude=slot)
                if used + need <= self.budget and count < self.settings.max_loaded_models:
                    slot.loading = True
                    return
                victim = self._lru_idle(exclude=slot)
                if victim is not None:
                    log.info(
                        "evicting idle model %s to load %s", victim.entry.name, slot.entry.name
                    )
                    await self._unload(victim)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(
                        f"no room to load model {slot.entry.name!r}: every loaded model is "
                        f"busy (needs {fmt_bytes(need)}; {fmt_bytes(self.budget - used)} of "
                        f"{fmt_bytes(self.budget)} free, {count} of "
                        f"{self.settings.max_loaded_models} models loaded)",
                        retry_after=5,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    def _lru_idle(self, exclude: Slot) -> Slot | None:
        idle = [
            s
            for s in self._slots.values()
            if s.loaded and s is not exclude and s.leases == 0 and not s.pinned
        ]
        return min(idle, key=lambda s: s.last_used) if idle else None

    async def _unload(self, slot: Slot) -> None:
        if slot.expiry is not None:
            slot.expiry.cancel()
            slot.expiry = None
        slot.expires_at = None
        await slot.client.close()

    async def unload(self, name: str | None) -> bool:
        """Unload now (operators). In-flight requests of the model fail."""
        slot = self._slot(name)
        was = slot.loaded
        async with self._changed:
            await self._unload(slot)
            self._changed.notify_all()
        return was

    # ---- keep-alive ---------------------------------------------------------------------

    def _set_keep_alive(self, slot: Slot, value: Any) -> None:
        """A request's keep_alive applies from its end on; requests without one bring the
        model's own back. Pinned models (--model) stay loaded whatever they ask."""
        keep = slot.base_keep_alive if value is None else parse_keep_alive(value)
        if not slot.pinned:
            slot.keep_alive = keep

    def _schedule_expiry(self, slot: Slot) -> None:
        if slot.expiry is not None:
            slot.expiry.cancel()
            slot.expiry = None
        if slot.keep_alive is None:
            slot.expires_at = None
            return
        slot.expires_at = time.time() + slot.keep_alive
        if slot.leases:
            return  # counted from the end of the last request
        loop = asyncio.get_running_loop()
        slot.expiry = loop.call_later(
            slot.keep_alive, lambda: asyncio.ensure_future(self._expire(slot))
        )

    async def _expire(self, slot: Slot) -> None:
        if slot.leases or not slot.loaded:
            return
        log.info("keep-alive of model %s expired: unloading", slot.entry.name)
        async with self._changed:
            if slot.leases == 0:
                await self._unload(slot)
            self._changed.notify_all()

    # ---- leases: every request holds one ----------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, name: str | None, keep_alive: Any = None) -> AsyncIterator[Slot]:
        slot = self._slot(name)
        self._set_keep_alive(slot, keep_alive)
        limit = slot.opts.parallel + self.settings.max_queue
        if slot.leases >= limit:
            raise Unavailable(
                f"model {slot.entry.name!r} is busy: {slot.leases} requests in flight, "
                f"queue limit {self.settings.max_queue}",
                retry_after=2,
            )
        slot.leases += 1
        if slot.expiry is not None:
            slot.expiry.cancel()
            slot.expiry = None
        try:
            await self.load(name)
            yield slot
        finally:
            slot.leases -= 1
            slot.last_used = time.monotonic()
            if slot.leases == 0 and slot.loaded:
                if slot.keep_alive == 0 and not slot.pinned:
                    asyncio.ensure_future(self._expire(slot))
                else:
                    self._schedule_expiry(slot)
            async with self._changed:
                self._changed.notify_all()

    async def generate(
        self, name: str | None, request: GenerateRequest, keep_alive: Any = None
    ) -> ChunkStream:
        async with self.lease(name, keep_alive) as slot:
            gen = slot.client.generate(request)
            try:
                async for chunk in gen:
                    yield chunk
            finally:
                await gen.aclose()

    async def embed(
        self, name: str | None, inputs: list[str], truncate: bool = False, keep_alive: Any = None
    ) -> Embeddings:
        async with self.lease(name, keep_alive) as slot:
            return await slot.client.embed(inputs, truncate)

    # ---- start / stop ---------------------------------------------------------------------

    async def start(self) -> dict[str, str]:
        """Load the pinned (--model) models; returns {name: error} for those that failed."""
        names = [n for n, s in self._slots.items() if s.pinned]
        results = await asyncio.gather(*(self.load(n) for n in names), return_exceptions=True)
        failed = {}
        for name, res in zip(names, results, strict=True):
            if isinstance(res, asyncio.CancelledError):
                raise res
            if isinstance(res, BaseException):
                reason = res.message if isinstance(res, MullamaError) else repr(res)
                log.error("model %s failed to load: %s", name, reason)
                failed[name] = reason
        return failed

    async def close(self) -> None:
        await asyncio.gather(
            *(self._unload(s) for s in self._slots.values()), return_exceptions=True
        )


def _copy_error(exc: MullamaError, suffix: str) -> MullamaError:
    out = type(exc)(exc.message + suffix, param=exc.param, code=exc.code, status=exc.status)
    out.headers = dict(exc.headers)
    return out
