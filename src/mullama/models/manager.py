"""The daemon's models and the one way to their engines.

``ModelManager`` puts together what the daemon serves: local models, whose residency
(loading, eviction, keep-alive, leases, back-off) is ``residency.Residency``'s; models on
remote engines (``remote.RemoteModel``); what a requested name means (``router.Router``:
aliases, remotes, the store, fallbacks), worked out once per request as a ``Target``; and
the response cache in front of the engines (``cache.CachedEngine``). Every engine, local
or remote, is an ``EngineClient`` (engine/interface.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from .. import requestctx
from ..config import Settings
from ..engine.client import WorkerClient
from ..engine.cpu import CpuBudget, detect, format_cpu_list
from ..engine.cpushare import share_dir
from ..engine.interface import EngineClient
from ..engine.protocol import (
    Chunk,
    ChunkStream,
    Embeddings,
    GenerateRequest,
    NullObserver,
    Ranked,
    TokenizeRequest,
    Tokens,
    WorkerInfo,
    WorkerSpec,
)
from ..errors import ClientError, EngineCrashed, ModelNotFound, ModelNotLoaded, MullamaError
from .adapters import Adapter, parse_adapters
from .adapters import identity as adapters_identity
from .adapters import wire as adapters_wire
from .breaker import CircuitBreaker
from .budget import parse_budget, parse_keep_alive
from .cache import CachedEngine, ResponseCache, cache_key, deterministic
from .entry import ModelEntry
from .gguf import InvalidGGUF
from .options import ModelOptions, parse_aliases, parse_fallbacks, parse_model_opts
from .registry import EMBEDDED_NAME, ModelRef, resolve
from .remote import RemoteModel, parse_remotes
from .residency import Residency, ServedModel, judged
from .router import Router, Target

log = logging.getLogger(__name__)


class ModelManager:
    """The models this daemon serves (--model, --remote, the store on demand) and every
    request's way to their engines: routed once, leased or behind a breaker, cached."""

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
        self.residency = Residency(settings, self.budget, self.default_keep_alive)
        self._served = self.residency.models
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
                breaker=self._breaker(name),
            )  # fmt: skip
        self.router = Router(
            self.aliases, self.fallbacks, self.remotes, self._served, settings.cache_dir
        )
        given = settings.model or ([] if self.remotes else [EMBEDDED_NAME])
        if settings.lora and not given:
            raise ClientError("--lora applies to the default local model: give one (--model)")
        for i, spec in enumerate(given):  # --lora: the default model's adapters
            self._add_given(spec, parse_adapters(settings.lora) if i == 0 else ())
        self._check_fallbacks()

    def _add_given(self, spec: str, lora: tuple[Adapter, ...] = ()) -> None:
        """Serve a --model (pinned unless its --model-opt says otherwise)."""
        ref = resolve(spec, cache_dir=self.settings.cache_dir)
        if ref.name in self._served or ref.name in self.remotes:
            raise ClientError(f"model name {ref.name!r} is given twice")
        if lora:
            self.per_model[ref.name] = self.per_model.get(ref.name, ModelOptions()).with_lora(lora)
        served = self._add(ModelEntry(ref), pinned=True)
        # The GGUF check first, as llama-server does: a file that fails it stops the
        # start (systemd and Kubernetes see it at once) instead of serving nothing.
        try:
            served.entry.gguf()
        except InvalidGGUF as exc:
            given = "" if spec == str(ref.path) else f" (--model {spec})"
            raise ClientError(exc.message + given) from None

    def _check_fallbacks(self) -> None:
        for primary, backup in self.fallbacks.items():
            for name in (primary, backup):
                try:
                    self.route(name)
                except ModelNotFound:
                    raise ClientError(
                        f"--fallback {primary}={backup}: there is no model {name!r}"
                    ) from None

    def _breaker(self, name: str) -> CircuitBreaker:
        s = self.settings
        return CircuitBreaker(name, s.breaker_failures, s.breaker_window, s.breaker_cooldown)

    # ---- what a name means ------------------------------------------------------------

    def route(self, name: str | Target | None) -> Target:
        """The target a requested name means, resolved once for the whole request (a
        Target is taken as it is). Raises ClientError for no name, ModelNotFound for a
        name that is no model; routing changes nothing."""
        return name if isinstance(name, Target) else self.router.route(name)

    def fallback_for(self, name: str | Target | None) -> str | None:
        """The model that answers for ``name`` when it cannot (--fallback)."""
        if isinstance(name, Target):
            return name.fallback
        return self.fallbacks.get(self.router.canonical(name) or "")

    def remote(self, name: str | Target | None) -> RemoteModel | None:
        """The remote model ``name`` means (an alias is followed), or None."""
        if isinstance(name, Target):
            return name.remote
        return self.remotes.get(self.router.canonical(name) or "")

    def find(self, name: str | Target | None) -> ModelEntry:
        """The local model ``name`` means (served, or in the store), without registering
        it: looking a model up changes nothing. Raises ModelNotFound."""
        target = self.route(name)
        if target.entry is None:
            raise self.router.not_found(target.name)
        return target.entry

    def options(self, name: str | Target | None) -> ModelOptions:
        """The settings of the model ``name`` means (--model-opt over the global flags),
        served or not; a lookup only."""
        own = name.name if isinstance(name, Target) else self.router.canonical(name) or ""
        served = self._served.get(own)
        if served is not None:
            return served.opts
        return self.per_model.get(own, ModelOptions()).with_defaults(self.settings)

    # ---- the set of local models --------------------------------------------------------

    def _add(self, entry: ModelEntry, pinned: bool) -> ServedModel:
        ref = entry.ref
        opts = self.per_model.get(ref.name, ModelOptions()).with_defaults(self.settings)
        if ref.lora:  # a custom model's adapters, then any --model-opt NAME:lora=
            opts = replace(opts, lora=(*ref.lora, *(opts.lora or ())))
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
                model_id=adapters_identity(model_identity(ref), opts.lora or ()),
                max_tokens=opts.max_tokens or 0,
                strict_fields=s.strict_fields,
                pooling=opts.pooling,
                lora=adapters_wire(opts.lora or ()),
            )
        )
        if self._observer is not None:
            client.observer = self._observer
        pinned = pinned if opts.pinned is None else opts.pinned
        keep = self.residency.own_keep_alive(opts, pinned)
        served = ServedModel(
            entry=entry,
            client=client,
            opts=opts,
            pinned=pinned,
            keep_alive=keep,
            base_keep_alive=keep,
            breaker=self._breaker(ref.name),
        )
        self._served[ref.name] = served
        return served

    def _register(self, target: Target) -> ServedModel:
        """Serve the local model ``target`` means from now on (loaded on demand, unloaded
        when idle): the explicit step that loading, leasing and unloading take, and
        lookups never do."""
        served = self._served.get(target.name)
        if served is not None:
            return served
        assert target.entry is not None, "a remote model is never served locally"
        return self._add(target.entry, pinned=False)

    def circuits(self) -> dict[str, CircuitBreaker]:
        """Each served model's circuit breaker (local and remote)."""
        out = {name: s.breaker for name, s in self._served.items()}
        out.update((name, r.breaker) for name, r in self.remotes.items())
        return out

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

    @property
    def default_name(self) -> str:
        """The model a request that names none means: the first one given with --model."""
        pinned = [n for n, s in self._served.items() if s.pinned]
        return (pinned or list(self._served) or list(self.remotes) or [""])[0]

    # ---- residency: operators' and requests' loads ----------------------------------------

    async def load(self, name: str | Target | None, keep_alive: Any = None) -> float:
        """Make sure the model is loaded; returns the seconds spent loading (0 if it was).
        A model that cannot be loaded raises an ``unserved`` error (a fallback may answer).
        A remote model is always "loaded": its engine runs elsewhere."""
        target = self.route(name)
        if target.remote is not None:
            return 0.0
        return await self.residency.load(self._register(target), keep_alive)

    async def unload(self, name: str | Target | None) -> bool:
        """Unload now (operators). In-flight requests of the model fail."""
        target = self.route(name)
        target.refuse_remote("unloading")
        served = self._served.get(target.name)
        if served is None:
            return False  # a known model, simply not loaded
        was = served.loaded
        await self.residency.unload_now(served)
        if self.cache is not None:
            await self.cache.forget(target.name)  # an operator's unload starts it afresh
        return was

    def pin(self, name: str | Target | None, pinned: bool) -> ServedModel:
        """Pin a model (operators): never unloaded by keep-alive or eviction, as a
        --model is; unpinning brings the default keep-alive back from now on."""
        target = self.route(name)
        target.refuse_remote("pinning")
        served = self._register(target)
        self.residency.pin(served, pinned)
        return served

    @contextlib.asynccontextmanager
    async def _engine(self, target: Target, keep_alive: Any) -> AsyncIterator[EngineClient]:
        """The engine that serves ``target`` for one request: a lease on a local model,
        or a remote model behind its circuit breaker."""
        if target.remote is not None:
            async with judged(target.remote.breaker):
                yield target.remote
            return
        served = self._register(target)
        async with self.residency.lease(served, keep_alive):
            yield served.client

    # ---- requests ---------------------------------------------------------------------

    async def generate(
        self, name: str | Target | None, request: GenerateRequest, keep_alive: Any = None
    ) -> ChunkStream:
        """The generation's chunks: from the response cache when it holds this exact
        deterministic request, otherwise from the engine (and then stored). Both the
        cache entry and the engine's prefix reuse are scoped to the caller's tenant and
        the request's cache_salt (``cache_scope``)."""
        target = self.route(name)
        ctx = requestctx.get()
        request = replace(request, cache_scope=ctx.cache_scope(request.cache_salt))
        async with contextlib.AsyncExitStack() as stack:
            engine: EngineClient | CachedEngine
            if self.cache is None:
                engine = await stack.enter_async_context(self._engine(target, keep_alive))
            else:
                key = await self._cache_key(target, request)
                acquire = partial(self._engine, target, keep_alive)
                observer = self._observer or NullObserver()
                engine = CachedEngine(self.cache, target.name, key, acquire, observer)
            gen = engine.generate(request, requestctx.progress_marker())
            try:
                async for chunk in gen:
                    _note_clamp(ctx, request, chunk)
                    yield chunk
            finally:
                await gen.aclose()

    async def _cache_key(self, target: Target, request: GenerateRequest) -> str | None:
        """The request's response-cache key; none when the request is not deterministic
        or said no-store."""
        ctx = requestctx.get()
        if self.cache is None or not deterministic(request):
            return None
        if not (ctx.cache_read or ctx.cache_store):  # Cache-Control: no-store
            return None
        if target.remote is not None:
            return cache_key(target.remote.digest, request)
        assert target.entry is not None
        digest = await asyncio.to_thread(target.entry.current_digest)
        # A model with adapters is another model: never the base's cached answers.
        lora = self.options(target).lora
        if lora:
            digest = await asyncio.to_thread(adapters_identity, digest, lora)
        await self.cache.track(target.name, digest)  # a replaced file's entries go
        return cache_key(digest, request)

    async def embed(
        self,
        name: str | Target | None,
        inputs: list[str],
        truncate: bool = False,
        keep_alive: Any = None,
        norm: int = 2,
        per_token: bool = False,
    ) -> Embeddings:
        """``norm``, ``per_token``: see EngineClient.embed."""
        async with self._engine(self.route(name), keep_alive) as engine:
            result = await engine.embed(inputs, truncate, norm, per_token)
        # Never silent: the response's Mullama-Inputs-Truncated header names them.
        requestctx.get().inputs_truncated += result.truncated
        return result

    async def rerank(
        self, name: str | Target | None, query: str, documents: list[str], keep_alive: Any = None
    ) -> Ranked | None:
        """Each document's score for ``query`` from a reranker (a local model with rank
        pooling: the GGUF's, or --pooling rank); None when the model is none (a remote
        model, or a model that pools otherwise: the caller scores with a chat model)."""
        target = self.route(name)
        if target.remote is not None:
            return None
        async with self._engine(target, keep_alive) as engine:
            if _worker_info(target.name, engine).pooling != "rank":
                return None
            return await engine.rank(query, documents)

    async def tokenize(
        self, name: str | Target | None, request: TokenizeRequest, keep_alive: Any = None
    ) -> tuple[Tokens, WorkerInfo]:
        """The tokens, and the facts of the model's tokenizer (for max_model_len)."""
        target = self.route(name)
        target.refuse_remote("tokenizing")
        async with self._engine(target, keep_alive) as engine:
            tokens = await engine.tokenize(request)
            return tokens, _worker_info(target.name, engine)

    async def detokenize(
        self, name: str | Target | None, tokens: list[int], keep_alive: Any = None
    ) -> str:
        target = self.route(name)
        target.refuse_remote("detokenizing")
        async with self._engine(target, keep_alive) as engine:
            return await engine.detokenize(tokens)

    def loaded_info(self, name: str | Target | None) -> WorkerInfo:
        """A loaded model's engine facts, for GET routes (/props, /tokenizer_info): a GET
        never loads a model, evicts one, or touches its keep-alive. Raises ModelNotFound,
        or ModelNotLoaded for a known model that is not loaded now."""
        target = self.route(name)
        target.refuse_remote("the tokenizer")
        served = self._served.get(target.name)
        if served is None or not served.loaded or served.client.info is None:
            raise ModelNotLoaded(
                f"model {target.name!r} is not loaded, and a GET never loads one: load it "
                f"(POST /api/models/{target.name}/load) or send it a request first",
                param="model",
            )
        return served.client.info

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
            self.residency.close(),
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


def _worker_info(name: str, engine: EngineClient) -> WorkerInfo:
    info = engine.info
    if info is None:  # loaded a moment ago and crashed since
        raise EngineCrashed(f"the engine of model {name!r} is not running")
    return info


def _note_clamp(ctx: requestctx.RequestContext, request: GenerateRequest, chunk: Chunk) -> None:
    """An answer given fewer tokens than its max_tokens asked: said in the response's
    Mullama-Max-Tokens-Clamped header (the first chunk comes before the response starts)."""
    if chunk.clamped is not None:
        asked = request.params.max_tokens
        ctx.max_tokens_clamped.append(f"{asked}->{chunk.max_tokens}; by={chunk.clamped}")
