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
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import requestctx
from ..config import Settings
from ..engine.client import WorkerClient
from ..engine.cpu import CpuBudget, detect, format_cpu_list
from ..engine.cpushare import share_dir
from ..engine.protocol import (
    Chunk,
    ChunkStream,
    Embeddings,
    GenerateRequest,
    TokenizeRequest,
    Tokens,
    WorkerInfo,
    WorkerSpec,
)
from ..errors import (
    ClientError,
    EngineCrashed,
    InsufficientMemory,
    ModelNotFound,
    ModelNotLoaded,
    MullamaError,
    ServerError,
    Unavailable,
)
from .aliases import close_matches
from .breaker import CircuitBreaker, counts_as_failure
from .budget import estimate_bytes, fmt_bytes, parse_budget, parse_keep_alive
from .cache import ResponseCache, cache_key, deterministic
from .defaults import gguf_sampling
from .gguf import GGUFInfo, InvalidGGUF, read_gguf
from .options import ModelOptions, parse_aliases, parse_fallbacks, parse_model_opts
from .registry import EMBEDDED_NAME, ModelRef, resolve
from .remote import RemoteModel, parse_remotes
from .store import sha256_file

log = logging.getLogger(__name__)


class ModelEntry:
    """A servable model: its name, file and (lazily, cached) GGUF metadata and digest."""

    def __init__(self, ref: ModelRef) -> None:
        self.name = ref.name
        self.path = ref.path
        self.ref = ref  # a custom model's system prompt, template and default parameters
        if ref.size is None or ref.modified is None:
            stat = ref.path.stat()
        self.size = ref.size if ref.size is not None else stat.st_size
        self.modified = ref.modified if ref.modified is not None else stat.st_mtime

    @cached_property
    def _gguf(self) -> GGUFInfo:
        return read_gguf(self.path)

    def gguf(self) -> GGUFInfo:
        return self._gguf

    @cached_property
    def sampling(self) -> dict[str, tuple[Any, str]]:
        """The GGUF's own request defaults: field -> (value, its general.sampling key)."""
        return gguf_sampling(self.gguf().metadata)

    def current_digest(self) -> str:
        """The digest of the file as it is now: a bare GGUF path replaced since it was
        hashed is hashed again (a store blob never changes)."""
        if self.ref.digest is None:
            stat = self.path.stat()
            if (stat.st_size, stat.st_mtime) != (self.size, self.modified):
                self.size, self.modified = stat.st_size, stat.st_mtime
                self.__dict__.pop("_digest", None)
        return self._digest

    @cached_property
    def _digest(self) -> str:
        # One digest whether served or not: the manifest's for a model in the store (no
        # hashing), the file's own sha256 for a bare GGUF path (hashed once, on demand).
        if self.ref.digest is not None:
            return self.ref.digest
        return sha256_file(self.path).removeprefix("sha256:")

    def digest(self) -> str:
        return self._digest


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
    loading: bool = False
    failures: int = 0
    retry_at: float = 0.0
    last_error: MullamaError | None = None
    seen_restarts: int = 0
    crash_times: list[float] = field(default_factory=list)
    breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(""))

    @property
    def loaded(self) -> bool:
        return self.client.alive


class ModelManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.default_keep_alive = parse_keep_alive(settings.keep_alive)
        self.budget = parse_budget(settings.memory_budget)
        self.cache_ram = parse_budget(settings.cache_ram)  # per model; 0: off
        self.session_disk = parse_budget(settings.session_disk)  # per model; 0: off
        self.per_model = parse_model_opts(settings.model_opt)
        self.aliases = parse_aliases(settings.model_alias)
        self.fallbacks = parse_fallbacks(settings.fallback)
        self.cache = ResponseCache.from_settings(settings)
        self._digests: dict[str, str] = {}  # model -> the digest its cache entries have
        self._served: dict[str, ServedModel] = {}
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
        # Models on remote engines (--remote); with only those, no local default model.
        self.remotes: dict[str, RemoteModel] = {}
        for name, (urls, opts) in parse_remotes(settings.remote, settings.remote_opt).items():
            self.remotes[name] = RemoteModel(
                name, urls, opts, max_queue=settings.max_queue, queue_timeout=settings.load_timeout,
                breaker=CircuitBreaker(name, settings.breaker_failures, settings.breaker_window,
                                       settings.breaker_cooldown),
            )  # fmt: skip
        for spec in settings.model or ([] if self.remotes else [EMBEDDED_NAME]):
            ref = resolve(spec, cache_dir=settings.cache_dir)
            if ref.name in self._served or ref.name in self.remotes:
                raise ClientError(f"model name {ref.name!r} is given twice")
            served = self._add(ref, pinned=True)
            # The GGUF check first, as llama-server does: a file that fails it stops the
            # start (systemd and Kubernetes see it at once) instead of serving nothing.
            try:
                served.entry.gguf()
            except InvalidGGUF as exc:
                given = "" if spec == str(ref.path) else f" (--model {spec})"
                raise ClientError(exc.message + given) from None
        for primary, backup in self.fallbacks.items():
            for name in (primary, backup):
                if self.remote(name) is not None:
                    continue
                try:
                    self.find(name)
                except ModelNotFound:
                    raise ClientError(
                        f"--fallback {primary}={backup}: there is no model {name!r}"
                    ) from None

    def fallback_for(self, name: str | None) -> str | None:
        """The model that answers for ``name`` when it cannot (--fallback)."""
        name = self.aliases.get(name or "", name)
        return self.fallbacks.get(name or "")

    # ---- the set of models ------------------------------------------------------------

    def _add(self, ref: ModelRef, pinned: bool) -> ServedModel:
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
                flash_attn=s.flash_attn,
                burst_wait_ms=s.burst_wait_ms,
                threads=opts.threads or self.cpu.threads,
                cpu_share_dir=self.share_dir,
                gpu_layers=opts.gpu_layers,
                log_level=s.log_level,
                log_format=s.log_format,
                log_file=s.log_file,
                load_timeout=s.load_timeout,
                cache_ram=self.cache_ram,
                preempt_after=s.preempt_after,
                sessions_dir=str(sessions_dir(s.cache_dir, ref.name)),
                session_disk=self.session_disk,
                session_interval=s.session_save_interval,
                model_id=model_identity(ref),
                max_tokens=opts.max_tokens or 0,
                strict_fields=s.strict_fields,
            )
        )
        if self._observer is not None:
            client.observer = self._observer
        pinned = pinned if opts.pinned is None else opts.pinned
        keep = self._own_keep_alive(opts, pinned)
        served = ServedModel(
            entry=ModelEntry(ref),
            client=client,
            opts=opts,
            pinned=pinned,
            keep_alive=keep,
            base_keep_alive=keep,
            breaker=CircuitBreaker(
                ref.name,
                self.settings.breaker_failures,
                self.settings.breaker_window,
                self.settings.breaker_cooldown,
            ),
        )
        self._served[ref.name] = served
        return served

    def _resolve(self, name: str | None) -> ModelRef:
        """What a name not served yet would serve; any model in the store can be loaded on
        demand, file paths only from --model."""
        if not name:
            raise ClientError("you must provide a model parameter", param="model")
        if name.endswith(".gguf") or name.startswith(("/", ".", "~")) or "=" in name:
            raise self._not_found(name)
        try:
            return resolve(name, cache_dir=self.settings.cache_dir, paths=False)
        except ModelNotFound:
            raise self._not_found(name) from None

    def remote(self, name: str | None) -> RemoteModel | None:
        """The remote model ``name`` means (an alias is followed), or None."""
        return self.remotes.get(self.aliases.get(name or "", name) or "")

    def _local_only(self, name: str | None, what: str) -> None:
        """Refuse, by name, what a remote engine does not offer through Mullama."""
        remote = self.remote(name)
        if remote is not None:
            raise ClientError(
                f"model {remote.name!r} is served by a remote engine: {what} is not available "
                "for it",
                param="model",
            )

    def find(self, name: str | None) -> ModelEntry:
        """The model ``name`` means (served, or in the store), without registering it:
        looking a model up changes nothing. Raises ModelNotFound."""
        name = self.aliases.get(name or "", name)
        served = self._served.get(name or "")
        return served.entry if served is not None else ModelEntry(self._resolve(name))

    def options(self, name: str | None) -> ModelOptions:
        """The settings of the model ``name`` means (--model-opt over the global flags),
        served or not; a lookup only."""
        name = self.aliases.get(name or "", name) or ""
        served = self._served.get(name)
        if served is not None:
            return served.opts
        return self.per_model.get(name, ModelOptions()).with_defaults(self.settings)

    def register(self, name: str | None) -> ServedModel:
        """Serve ``name`` from now on (loaded on demand, unloaded when idle): the explicit
        step that loading, leasing and unloading take, and lookups never do."""
        name = self.aliases.get(name or "", name)
        served = self._served.get(name or "")
        return served if served is not None else self._add(self._resolve(name), pinned=False)

    def circuits(self) -> dict[str, CircuitBreaker]:
        """Each served model's circuit breaker (local and remote)."""
        out = {name: s.breaker for name, s in self._served.items()}
        out.update((name, r.breaker) for name, r in self.remotes.items())
        return out

    def _not_found(self, name: str) -> ModelNotFound:
        hint = close_matches(name, [*self._served, *self.remotes], cutoff=0.6)
        return ModelNotFound(f"The model '{name}' does not exist{hint}", param="model")

    def set_observer(self, observer: Any) -> None:
        """Engine events (accept, admit, tokens, load) of every model go to ``observer``."""
        self._observer = observer
        for served in self._served.values():
            served.client.observer = observer
        for remote in self.remotes.values():
            remote.observer = observer

    @property
    def names(self) -> list[str]:
        return list(self._served)

    def clients(self) -> list[WorkerClient]:
        return [s.client for s in self._served.values()]

    def served(self) -> list[ServedModel]:
        return list(self._served.values())

    # ---- loading, budget, eviction ------------------------------------------------------

    def _estimate(self, served: ServedModel) -> int:
        if not served.estimate:
            o, s = served.opts, self.settings
            total = o.context_size * o.parallel
            # Without flash attention the attention scores of a micro-batch span a
            # sequence's stream or the whole pool.
            span = 0 if s.flash_attn != "off" else total if s.kv_unified else o.context_size
            served.estimate = estimate_bytes(served.entry.gguf(), total, o.batch_size, span)
        return served.estimate

    def _used(self, exclude: ServedModel | None = None) -> tuple[int, int]:
        loaded = [s for s in self._served.values() if (s.loaded or s.loading) and s is not exclude]
        return sum(s.estimate for s in loaded), len(loaded)

    async def load(self, name: str | None, keep_alive: Any = None) -> float:
        """Make sure the model is loaded; returns the seconds spent loading (0 if it was).
        A model that cannot be loaded raises an ``unserved`` error (a fallback may answer).
        A remote model is always "loaded": its engine runs elsewhere."""
        if self.remote(name) is not None:
            return 0.0
        served = self.register(name)
        try:
            return await self._load(served, keep_alive)
        except MullamaError as exc:
            _unserved(exc)
            # The log has the file's path; a client is told the model's name only.
            exc.message = _without_path(exc.message, served.entry.path)
            raise

    async def _load(self, served: ServedModel, keep_alive: Any) -> float:
        if keep_alive is not None:
            self._set_keep_alive(served, keep_alive)
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
            await self._make_room(served, need)  # sets served.loading
            try:
                await served.client.ensure_started()
            except MullamaError as exc:
                if repr(served.entry.name) not in exc.message:  # the engine's words
                    exc.message = f"model {served.entry.name!r} cannot be loaded: {exc.message}"
                self._record_failure(served, exc)
                raise
            finally:
                served.loading = False
            served.failures = 0
            served.last_error = None
            served.last_used = time.monotonic()
            self._schedule_expiry(served)
        return time.perf_counter() - started

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
        log.error(
            "model %s failed to load (%d in a row; next try in %ds): %s",
            served.entry.name,
            served.failures,
            delay,
            exc.message,
        )

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
                    served.loading = True
                    return
                self._check_room_possible(served, need)
                victim = self._lru_idle(exclude=served)
                if victim is not None:
                    log.info(
                        "evicting idle model %s to load %s", victim.entry.name, served.entry.name
                    )
                    await self._unload(victim)
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
        pinned = [s for s in self._served.values()
                  if (s.loaded or s.loading) and s.pinned and s is not served]  # fmt: skip
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
            for s in self._served.values()
            if s.loaded and s is not exclude and s.leases == 0 and not s.pinned
        ]
        return min(idle, key=lambda s: s.last_used) if idle else None

    async def _unload(self, served: ServedModel) -> None:
        if served.expiry is not None:
            served.expiry.cancel()
            served.expiry = None
        served.expires_at = None
        await served.client.close()

    async def unload(self, name: str | None) -> bool:
        """Unload now (operators). In-flight requests of the model fail."""
        self._local_only(name, "unloading")
        name = self.aliases.get(name or "", name)
        served = self._served.get(name or "")
        if served is None:
            self.find(name)  # an unknown name is an error; a known one is simply not loaded
            return False
        was = served.loaded
        async with self._changed:
            await self._unload(served)
            self._changed.notify_all()
        digest = self._digests.pop(served.entry.name, None)
        if self.cache is not None and digest is not None:
            await self.cache.invalidate(digest)  # an operator's unload starts it afresh
        return was

    def pin(self, name: str | None, pinned: bool) -> ServedModel:
        """Pin a model (operators): never unloaded by keep-alive or eviction, as a
        --model is; unpinning brings the default keep-alive back from now on."""
        self._local_only(name, "pinning")
        served = self.register(name)
        served.pinned = pinned
        served.keep_alive = served.base_keep_alive = self._own_keep_alive(served.opts, pinned)
        if served.loaded and not served.leases:
            self._schedule_expiry(served)
        return served

    # ---- keep-alive ---------------------------------------------------------------------

    def _own_keep_alive(self, opts: ModelOptions, pinned: bool) -> float | None:
        """A model's keep-alive when a request gives none: its --model-opt, else the
        daemon's; None (forever) while pinned."""
        if pinned:
            return None
        own = opts.keep_alive
        return self.default_keep_alive if own is None else parse_keep_alive(own)

    def _set_keep_alive(self, served: ServedModel, value: Any) -> None:
        """A request's keep_alive applies from its end on; requests without one bring the
        model's own back. Pinned models (--model) stay loaded whatever they ask."""
        keep = served.base_keep_alive if value is None else parse_keep_alive(value)
        if not served.pinned:
            served.keep_alive = keep

    def _schedule_expiry(self, served: ServedModel) -> None:
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
                await self._unload(served)
            self._changed.notify_all()

    # ---- leases: every request holds one ----------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, name: str | None, keep_alive: Any = None) -> AsyncIterator[ServedModel]:
        served = self.register(name)
        self._set_keep_alive(served, keep_alive)
        limit = served.opts.parallel + self.settings.max_queue
        if served.leases >= limit:
            raise _unserved(Unavailable(
                f"model {served.entry.name!r} is busy: {served.leases} requests in flight, "
                f"queue limit {self.settings.max_queue}",
                retry_after=2,
            ))  # fmt: skip
        async with _judged(served.breaker):  # an open circuit fails fast here
            served.leases += 1
            if served.expiry is not None:
                served.expiry.cancel()
                served.expiry = None
            try:
                await self.load(name)
                yield served
            finally:
                served.leases -= 1
                served.last_used = time.monotonic()
                if served.leases == 0 and served.loaded:
                    if served.keep_alive == 0 and not served.pinned:
                        asyncio.ensure_future(self._expire(served))
                    else:
                        self._schedule_expiry(served)
                async with self._changed:
                    self._changed.notify_all()

    async def generate(
        self, name: str | None, request: GenerateRequest, keep_alive: Any = None
    ) -> ChunkStream:
        """The generation's chunks: from the response cache when it holds this exact
        deterministic request, otherwise from the engine (and then stored). Both the
        cache entry and the engine's prefix reuse are scoped to the caller's tenant and
        the request's cache_salt (``cache_scope``)."""
        ctx = requestctx.get()
        request = replace(request, cache_scope=ctx.cache_scope(request.cache_salt))
        key, model = await self._cache_key(name, request)
        if key is not None and ctx.cache_read and self.cache is not None:
            found = await self.cache.lookup(key)
            if isinstance(found, list):
                ctx.cache_hits += 1
                self.cache.stats.hits[model] += 1
                seen = (
                    self._observer.generation(model, request.request_id) if self._observer else None
                )
                try:
                    for chunk in found:
                        if seen is not None and chunk.finish_reason is not None:
                            seen.output(0, chunk.finish_reason)
                        _note_clamp(ctx, request, chunk)
                        yield chunk
                finally:
                    if seen is not None:
                        seen.closed(None)
                return
            if found is not None:  # the cache is down: served as if it were off
                key = None
        recorded: list[Chunk] | None = [] if key is not None and ctx.cache_store else None
        async with self._engine(name, keep_alive) as (model, engine):
            if self.cache is not None:  # counted once the model took the request
                if key is None:
                    ctx.cache_bypassed += 1
                else:
                    ctx.cache_misses += 1
                    self.cache.stats.misses[model] += 1
            gen = engine.generate(request, requestctx.progress_marker())
            try:
                async for chunk in gen:
                    _note_clamp(ctx, request, chunk)
                    if recorded is not None:
                        recorded.append(chunk)
                        if chunk.finish_reason in ("stop", "length"):  # stored before it goes out
                            await self.cache.store(key, recorded)  # type: ignore[union-attr,arg-type]
                    yield chunk
            finally:
                await gen.aclose()

    async def _cache_key(
        self, name: str | None, request: GenerateRequest
    ) -> tuple[str | None, str]:
        """The request's response-cache key and the model's name; no key when the cache
        is off, the request is not deterministic, or the request said no-store."""
        ctx = requestctx.get()
        if self.cache is None or not deterministic(request):
            return None, ""
        if not (ctx.cache_read or ctx.cache_store):  # Cache-Control: no-store
            return None, ""
        remote = self.remote(name)
        if remote is not None:
            return cache_key(remote.digest, request), remote.name
        entry = self.find(name)
        digest = await asyncio.to_thread(entry.current_digest)
        before = self._digests.get(entry.name)
        if before is not None and before != digest:  # the model's file was replaced
            await self.cache.invalidate(before)
        self._digests[entry.name] = digest
        return cache_key(digest, request), entry.name

    async def embed(
        self, name: str | None, inputs: list[str], truncate: bool = False, keep_alive: Any = None
    ) -> Embeddings:
        async with self._engine(name, keep_alive) as (_, engine):
            return await engine.embed(inputs, truncate)

    @contextlib.asynccontextmanager
    async def _engine(
        self, name: str | None, keep_alive: Any
    ) -> AsyncIterator[tuple[str, WorkerClient | RemoteModel]]:
        """The engine that serves ``name`` for one request (and the model's name): a
        lease on a local model, or a remote model behind its circuit breaker."""
        remote = self.remote(name)
        if remote is None:
            async with self.lease(name, keep_alive) as served:
                yield served.entry.name, served.client
            return
        async with _judged(remote.breaker):
            yield remote.name, remote

    async def tokenize(
        self, name: str | None, request: TokenizeRequest, keep_alive: Any = None
    ) -> tuple[Tokens, WorkerInfo]:
        """The tokens, and the facts of the model's tokenizer (for max_model_len)."""
        self._local_only(name, "tokenizing")
        async with self.lease(name, keep_alive) as served:
            tokens = await served.client.tokenize(request)
            return tokens, self._worker_info(served)

    async def detokenize(self, name: str | None, tokens: list[int], keep_alive: Any = None) -> str:
        self._local_only(name, "detokenizing")
        async with self.lease(name, keep_alive) as served:
            return await served.client.detokenize(tokens)

    def loaded_info(self, name: str | None) -> WorkerInfo:
        """A loaded model's engine facts, for GET routes (/props, /tokenizer_info): a GET
        never loads a model, evicts one, or touches its keep-alive. Raises ModelNotFound,
        or ModelNotLoaded for a known model that is not loaded now."""
        self._local_only(name, "the tokenizer")
        entry = self.find(name)
        served = self._served.get(entry.name)
        if served is None or not served.loaded or served.client.info is None:
            raise ModelNotLoaded(
                f"model {entry.name!r} is not loaded, and a GET never loads one: load it "
                f"(POST /api/models/{entry.name}/load) or send it a request first",
                param="model",
            )
        return served.client.info

    @staticmethod
    def _worker_info(served: ServedModel) -> WorkerInfo:
        info = served.client.info
        if info is None:  # loaded a moment ago and crashed since
            raise EngineCrashed(f"the engine of model {served.entry.name!r} is not running")
        return info

    @property
    def default_name(self) -> str:
        """The model a request that names none means: the first one given with --model."""
        pinned = [n for n, s in self._served.items() if s.pinned]
        return (pinned or list(self._served) or list(self.remotes) or [""])[0]

    # ---- start / stop ---------------------------------------------------------------------

    async def start(self) -> dict[str, str]:
        """Load the pinned (--model) models; returns {name: error} for those that failed."""
        for remote in self.remotes.values():
            remote.start()  # health checks
        names = [n for n, s in self._served.items() if s.pinned]
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
            *(self._unload(s) for s in self._served.values()),
            *(r.close() for r in self.remotes.values()),
            return_exceptions=True,
        )


def sessions_dir(cache_dir: str, model: str) -> Path:
    """Where a model's conversations are saved across restarts."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in model)
    return Path(cache_dir).expanduser() / "sessions" / safe


def model_identity(ref: ModelRef) -> str:
    """What saved sessions must match: the manifest's digest, or for a bare GGUF path
    its resolved path, size and modification time (hashing it would cost a read)."""
    if ref.digest is not None:
        return ref.digest
    stat = ref.path.stat()
    return f"file:{ref.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _without_path(message: str, path: Path) -> str:
    """``message`` with the model file's path left out (clients learn no file-system
    layout: the store's blob paths, the operator's directories)."""
    for form in sorted({str(path), str(path.resolve())}, key=len, reverse=True):
        message = message.replace(f"{form}: ", "").replace(f" {form}", "")
        message = message.replace(form, "the model file")
    return message


@contextlib.asynccontextmanager
async def _judged(breaker: CircuitBreaker) -> AsyncIterator[None]:
    """One request under a model's circuit breaker: refused at once while it is open (an
    ``unserved`` error), and its outcome counted (the model's failures only)."""
    try:
        probe = breaker.before()
    except MullamaError as exc:
        _unserved(exc)
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


def _note_clamp(ctx: requestctx.RequestContext, request: GenerateRequest, chunk: Chunk) -> None:
    """An answer given fewer tokens than its max_tokens asked: said in the response's
    Mullama-Max-Tokens-Clamped header (the first chunk comes before the response starts)."""
    if chunk.clamped is not None:
        asked = request.params.max_tokens
        ctx.max_tokens_clamped.append(f"{asked}->{chunk.max_tokens}; by={chunk.clamped}")


def _unserved(exc: MullamaError) -> MullamaError:
    """Mark an error raised before the model took the request (its queue is full, its
    circuit is open, it cannot be loaded): a fallback model may answer instead."""
    exc.unserved = True
    return exc


def _copy_error(exc: MullamaError, suffix: str) -> MullamaError:
    out = type(exc)(exc.message + suffix, param=exc.param, code=exc.code, status=exc.status)
    out.headers = dict(exc.headers)
    return out
