"""Which local models are loaded: on-demand loading, LRU eviction under a memory budget
and a count limit, keep-alive, leases with bounded queues, and crash back-off.

Every request on a local model holds a lease for its whole life (streaming included); a
model with leases is never evicted. Each model has one ``ModelState``, kept here at each
transition, which the status pages (/api/ps, /api/system/status) read as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..engine.client import WorkerClient
from ..errors import EngineCrashed, InsufficientMemory, MullamaError, ServerError, Unavailable
from .breaker import CircuitBreaker, counts_as_failure
from .budget import estimate_bytes, fmt_bytes, parse_keep_alive
from .entry import ModelEntry
from .options import ModelOptions

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    """Where a local model is in its life (as llama.cpp's ``server_model_status``)."""

    UNLOADED = "unloaded"  # no engine process: loaded by its next request
    LOADING = "loading"  # room made, the engine process starting
    LOADED = "loaded"  # serving
    FAILED = "failed"  # its last load failed: retried after a back-off (``retry_at``)
    UNLOADING = "unloading"  # its engine process is stopping (keep-alive, eviction, operator)


@dataclass
class ServedModel:
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
    failures: int = 0
    retry_at: float = 0.0
    last_error: MullamaError | None = None
    seen_restarts: int = 0
    crash_times: list[float] = field(default_factory=list)
    breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(""))
    status: ModelState = ModelState.UNLOADED  # as last set; read ``state``

    @property
    def loaded(self) -> bool:
        """Whether its engine process runs now."""
        return self.client.alive

    @property
    def state(self) -> ModelState:
        """The model's state; a loaded model whose engine process died since is
        unloaded (its next request starts it again)."""
        if self.status is ModelState.LOADED and not self.client.alive:
            return ModelState.UNLOADED
        return self.status

    @property
    def holds_memory(self) -> bool:
        """Whether its engine counts against the budget (running, or being started)."""
        return self.loaded or self.status is ModelState.LOADING


class Residency:
    """The local models and which of them are loaded, under ``settings``' limits
    (--memory-budget as ``budget``, --max-loaded-models, --max-queue, --keep-alive)."""

    def __init__(self, settings: Settings, budget: int, default_keep_alive: float | None) -> None:
        self.settings = settings
        self.budget = budget
        self.default_keep_alive = default_keep_alive
        self.models: dict[str, ServedModel] = {}
        self._changed = asyncio.Condition()

    # ---- loading ----------------------------------------------------------------------

    async def load(self, served: ServedModel, keep_alive: Any = None) -> float:
        """Make sure the model is loaded; returns the seconds spent loading (0 if it
        was). A model that cannot be loaded raises an ``unserved`` error."""
        try:
            return await self._load(served, keep_alive)
        except MullamaError as exc:
            unserved(exc)
            # The log has the file's path; a client is told the model's name only.
            exc.message = _without_path(exc.message, served.entry.path)
            raise

    async def _load(self, served: ServedModel, keep_alive: Any) -> float:
        if keep_alive is not None:
            self.set_keep_alive(served, keep_alive)
        if served.loaded:
            return 0.0
        started = time.perf_counter()
        async with served.load_lock:  # concurrent requests wait for this one load
            if served.loaded:
                return 0.0
            now = time.monotonic()
            if served.last_error is not None and now < served.retry_at:
                raise _copy_error(served.last_error, f" (retrying in {served.retry_at - now:.0f}s)")
            self._check_crash_loop(served)
            try:  # reads and checks the GGUF before any worker starts
                need = await asyncio.to_thread(self._estimate, served)
            except MullamaError as exc:
                bad = ServerError(
                    f"model {served.entry.name!r} cannot be loaded: {exc.message}",
                    code=exc.code,
                )
                self._record_failure(served, bad)
                served.client.observer.loaded(served.entry.name, 0.0, bad)
                raise bad from exc
            await self._make_room(served, need)  # the model is LOADING from here
            await self._start(served)
            self.schedule_expiry(served)
        return time.perf_counter() - started

    async def _start(self, served: ServedModel) -> None:
        """Start the model's engine process (it is LOADING): LOADED, or FAILED."""
        try:
            await served.client.ensure_started()
        except MullamaError as exc:
            if repr(served.entry.name) not in exc.message:  # the engine's words
                exc.message = f"model {served.entry.name!r} cannot be loaded: {exc.message}"
            self._record_failure(served, exc)
            raise
        except BaseException:
            served.status = ModelState.UNLOADED  # cancelled while starting
            raise
        served.status = ModelState.LOADED
        served.failures = 0
        served.last_error = None
        served.last_used = time.monotonic()

    def _estimate(self, served: ServedModel) -> int:
        if not served.estimate:
            o, s = served.opts, self.settings
            total = o.context_size * o.parallel
            # Without flash attention the attention scores of a micro-batch span a
            # sequence's stream or the whole pool.
            span = 0 if s.flash_attn != "off" else total if s.kv_unified else o.context_size
            served.estimate = estimate_bytes(served.entry.gguf(), total, o.batch_size, span)
            served.estimate += sum(a.size for a in o.lora or ())  # LoRA adapters' weights
        return served.estimate

    def _check_crash_loop(self, served: ServedModel) -> None:
        """A worker that crashed is restarted on the next request; one that keeps crashing
        (3 times within a minute) is restarted only after a growing pause."""
        restarts = served.client.restarts
        if restarts == served.seen_restarts:
            return
        now = time.monotonic()
        served.crash_times = [t for t in served.crash_times if now - t < 60]
        served.crash_times.extend([now] * (restarts - served.seen_restarts))
        served.seen_restarts = restarts
        if len(served.crash_times) >= 3:
            delay = min(2 ** (len(served.crash_times) - 3), 60)
            self._record_failure(
                served,
                EngineCrashed(
                    f"the engine for model {served.entry.name!r} crashed "
                    f"{len(served.crash_times)} times in the last minute"
                ),
                delay,
            )
            raise _copy_error(served.last_error, f" (retrying in {delay}s)")  # type: ignore[arg-type]

    def _record_failure(
        self, served: ServedModel, exc: MullamaError, delay: float | None = None
    ) -> None:
        served.failures += 1
        if delay is None:
            delay = min(2 ** (served.failures - 1), 60)
        served.retry_at = time.monotonic() + delay
        served.last_error = exc
        served.status = ModelState.FAILED
        log.error(
            "model %s failed to load (%d in a row; next try in %ds): %s",
            served.entry.name,
            served.failures,
            delay,
            exc.message,
        )

    # ---- room: the budget and eviction ---------------------------------------------------

    def _used(self, exclude: ServedModel) -> tuple[int, int]:
        held = [s for s in self.models.values() if s.holds_memory and s is not exclude]
        return sum(s.estimate for s in held), len(held)

    async def _make_room(self, served: ServedModel, need: int) -> None:
        if need > self.budget:
            raise InsufficientMemory(
                f"model {served.entry.name!r} needs about {fmt_bytes(need)} (weights, KV cache "
                f"and buffers) but the memory budget is {fmt_bytes(self.budget)}; raise "
                "--memory-budget or lower its context size or parallel sequences"
            )
        deadline = time.monotonic() + self.settings.load_timeout
        async with self._changed:
            while True:
                used, count = self._used(exclude=served)
                if used + need <= self.budget and count < self.settings.max_loaded_models:
                    served.status = ModelState.LOADING
                    return
                self._check_room_possible(served, need)
                victim = self._lru_idle(exclude=served)
                if victim is not None:
                    log.info(
                        "evicting idle model %s to load %s", victim.entry.name, served.entry.name
                    )
                    await self.unload(victim)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(
                        f"no room to load model {served.entry.name!r}: every loaded model is "
                        f"busy (needs {fmt_bytes(need)}; {fmt_bytes(self.budget - used)} of "
                        f"{fmt_bytes(self.budget)} free, {count} of "
                        f"{self.settings.max_loaded_models} models loaded)",
                        retry_after=5,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    def _check_room_possible(self, served: ServedModel, need: int) -> None:
        """Fail at once when waiting cannot help: the pinned models alone (never
        unloaded) leave no room for this one. Busy unpinned models finish and go, so a
        request that fits once they are idle keeps waiting."""
        pinned = [s for s in self.models.values()
                  if s.holds_memory and s.pinned and s is not served]  # fmt: skip
        held = sum(s.estimate for s in pinned)
        if held + need <= self.budget and len(pinned) < self.settings.max_loaded_models:
            return
        names = ", ".join(sorted(s.entry.name for s in pinned))
        if len(pinned) >= self.settings.max_loaded_models:
            why = f"--max-loaded-models is {self.settings.max_loaded_models}"
        else:
            why = (f"they take {fmt_bytes(held)} of the {fmt_bytes(self.budget)} budget and it "
                   f"needs {fmt_bytes(need)}")  # fmt: skip
        raise Unavailable(
            f"model {served.entry.name!r} cannot be loaded: the pinned models ({names}) "
            f"hold the room and are never unloaded ({why}); raise the limit, or unpin one "
            "with --model-opt NAME:pinned=false",
            retry_after=60,
        )

    def _lru_idle(self, exclude: ServedModel) -> ServedModel | None:
        idle = [
            s
            for s in self.models.values()
            if s.loaded and s is not exclude and s.leases == 0 and not s.pinned
        ]
        return min(idle, key=lambda s: s.last_used) if idle else None

    async def unload(self, served: ServedModel) -> None:
        """Stop the model's engine process; its in-flight requests fail."""
        if served.expiry is not None:
            served.expiry.cancel()
            served.expiry = None
        served.expires_at = None
        if served.status is not ModelState.FAILED:
            served.status = ModelState.UNLOADING
        try:
            await served.client.close()
        finally:
            if served.status is ModelState.UNLOADING:
                served.status = ModelState.UNLOADED

    async def unload_now(self, served: ServedModel) -> None:
        """Unload on an operator's word, and wake the loads waiting for room."""
        async with self._changed:
            await self.unload(served)
            self._changed.notify_all()

    # ---- keep-alive -------------------------------------------------------------------

    def own_keep_alive(self, opts: ModelOptions, pinned: bool) -> float | None:
        """A model's keep-alive when a request gives none: its --model-opt, else the
        daemon's; None (forever) while pinned."""
        if pinned:
            return None
        own = opts.keep_alive
        return self.default_keep_alive if own is None else parse_keep_alive(own)

    def pin(self, served: ServedModel, pinned: bool) -> None:
        """Never unloaded by keep-alive or eviction while pinned, as a --model is;
        unpinning brings the default keep-alive back from now on."""
        served.pinned = pinned
        served.keep_alive = served.base_keep_alive = self.own_keep_alive(served.opts, pinned)
        if served.loaded and not served.leases:
            self.schedule_expiry(served)

    def set_keep_alive(self, served: ServedModel, value: Any) -> None:
        """A request's keep_alive applies from its end on; requests without one bring the
        model's own back. Pinned models (--model) stay loaded whatever they ask."""
        keep = served.base_keep_alive if value is None else parse_keep_alive(value)
        if not served.pinned:
            served.keep_alive = keep

    def schedule_expiry(self, served: ServedModel) -> None:
        if served.expiry is not None:
            served.expiry.cancel()
            served.expiry = None
        if served.keep_alive is None:
            served.expires_at = None
            return
        served.expires_at = time.time() + served.keep_alive
        if served.leases:
            return  # counted from the end of the last request
        loop = asyncio.get_running_loop()
        served.expiry = loop.call_later(
            served.keep_alive, lambda: asyncio.ensure_future(self._expire(served))
        )

    async def _expire(self, served: ServedModel) -> None:
        if served.leases or not served.loaded:
            return
        log.info("keep-alive of model %s expired: unloading", served.entry.name)
        async with self._changed:
            if served.leases == 0:
                await self.unload(served)
            self._changed.notify_all()

    # ---- leases: every request holds one ----------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, served: ServedModel, keep_alive: Any = None) -> AsyncIterator[None]:
        """One request on the model, loaded for it and kept while it runs; refused at
        once when its queue is full or its circuit is open (``unserved`` errors)."""
        self.set_keep_alive(served, keep_alive)
        limit = served.opts.parallel + self.settings.max_queue
        if served.leases >= limit:
            raise unserved(Unavailable(
                f"model {served.entry.name!r} is busy: {served.leases} requests in flight, "
                f"queue limit {self.settings.max_queue}",
                retry_after=2,
            ))  # fmt: skip
        async with judged(served.breaker):  # an open circuit fails fast here
            served.leases += 1
            if served.expiry is not None:
                served.expiry.cancel()
                served.expiry = None
            try:
                await self.load(served)
                yield
            finally:
                await self._release(served)

    async def _release(self, served: ServedModel) -> None:
        served.leases -= 1
        served.last_used = time.monotonic()
        if served.leases == 0 and served.loaded:
            if served.keep_alive == 0 and not served.pinned:
                asyncio.ensure_future(self._expire(served))
            else:
                self.schedule_expiry(served)
        async with self._changed:
            self._changed.notify_all()

    async def close(self) -> None:
        await asyncio.gather(
            *(self.unload(s) for s in self.models.values()), return_exceptions=True
        )


@contextlib.asynccontextmanager
async def judged(breaker: CircuitBreaker) -> AsyncIterator[None]:
    """One request under a model's circuit breaker: refused at once while it is open (an
    ``unserved`` error), and its outcome counted (the model's failures only)."""
    try:
        probe = breaker.before()
    except MullamaError as exc:
        unserved(exc)
        raise
    verdict = False
    try:
        yield
        verdict = True
        breaker.success(probe)
    except BaseException as exc:
        if counts_as_failure(exc):
            verdict = True
            breaker.failure(probe, exc)
        raise
    finally:
        if not verdict:
            breaker.no_verdict(probe)


def unserved(exc: MullamaError) -> MullamaError:
    """Mark an error raised before the model took the request (its queue is full, its
    circuit is open, it cannot be loaded): a fallback model may answer instead."""
    exc.unserved = True
    return exc


def _copy_error(exc: MullamaError, suffix: str) -> MullamaError:
    out = type(exc)(exc.message + suffix, param=exc.param, code=exc.code, status=exc.status)
    out.headers = dict(exc.headers)
    return out


def _without_path(message: str, path: Path) -> str:
    """``message`` with the model file's path left out (clients learn no file-system
    layout: the store's blob paths, the operator's directories)."""
    for form in sorted({str(path), str(path.resolve())}, key=len, reverse=True):
        message = message.replace(f"{form}: ", "").replace(f" {form}", "")
        message = message.replace(form, "the model file")
    return message
