"""The response cache: an exact-match cache of deterministic generations.

A generation is deterministic when its temperature is 0 or it has a fixed seed. Its key is
the model's digest plus the whole ``GenerateRequest`` as the worker would receive it
(messages or prompt, template, tools, every sampling field, the schema and the tool
grammar), without its id: every API's request is normalised into that one type before it
gets here, so the OpenAI, Ollama, Anthropic and llama-server routes share entries. What is
stored is the engine's chunk stream, so a hit goes back through the same encoders as a
live answer and comes out in the same chunk shapes; only its token counts are zero
(nothing was computed).

Entries live in this process (a byte budget, least recently used out first) or in Redis
(shared by several daemons, each entry with a TTL; memory and eviction are Redis's own).
The digest in the key means a replaced model file never serves old answers; an operator's
unload drops the model's entries. When Redis cannot be reached the cache is bypassed (a
warning, at most every 30 s) and requests are served as if it were off.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import orjson

from .. import requestctx
from ..engine.interface import EngineClient
from ..engine.protocol import Chunk, ChunkStream, GenerateRequest

log = logging.getLogger(__name__)

PREFIX = "mullama:rc:"
REDIS_TIMEOUT = 0.5  # seconds for one cache operation; past it the cache is bypassed
WARN_EVERY = 30.0


def deterministic(request: GenerateRequest) -> bool:
    """Whether the request's answer can come from the cache: a fixed answer, and one
    that is the point of the request (a prompt evaluated for nothing, such as
    llama-server's ``n_predict: 0``, is sent to warm the KV cache: it must reach it)."""
    p = request.params
    if p.max_tokens == 0 and not p.prompt_logprobs:
        return False
    return p.temperature == 0 or (p.seed is not None and p.seed >= 0)


def cache_key(digest: str, request: GenerateRequest) -> str:
    wire = asdict(request)
    del wire["request_id"]
    return f"{PREFIX}{digest}:{hashlib.sha256(orjson.dumps(wire)).hexdigest()}"


def encode(chunks: list[Chunk]) -> bytes:
    return orjson.dumps(
        [[c.text, c.finish_reason, c.logprobs, c.stop, c.reasoning] for c in chunks]
    )


def decode(blob: bytes) -> list[Chunk]:
    """The stored stream as chunks with zero token counts: a hit computes nothing. Its
    thinking text comes back too (entries stored before it was kept have none)."""
    return [
        Chunk(text, 0, 0, finish, logprobs, stop, reasoning=rest[0] if rest else "")
        for text, finish, logprobs, stop, *rest in orjson.loads(blob)
    ]


class CacheDown(Exception):
    """The shared cache (Redis) did not answer."""


class Backend(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes) -> None: ...
    async def drop(self, digest: str) -> int: ...


@dataclass
class CacheStats:
    hits: Counter[str] = field(default_factory=Counter)  # by model
    misses: Counter[str] = field(default_factory=Counter)
    stores: int = 0
    evictions: int = 0
    errors: int = 0  # Redis operations that failed (each one bypassed the cache)
    bytes: int = 0  # held in memory (the memory backend)
    entries: int = 0


class MemoryBackend:
    """Entries in this process, least recently used out first past ``max_bytes``."""

    def __init__(self, max_bytes: int, ttl: float, stats: CacheStats) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.stats = stats
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        value, stored = found
        if time.monotonic() - stored > self.ttl:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (value, time.monotonic())
        self.stats.bytes += len(value)
        while self.stats.bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))
            self.stats.evictions += 1
        self.stats.entries = len(self._entries)

    async def drop(self, digest: str) -> int:
        prefix = f"{PREFIX}{digest}:"
        keys = [k for k in self._entries if k.startswith(prefix)]
        for k in keys:
            self._remove(k)
        return len(keys)

    def _remove(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.stats.bytes -= len(value)
        self.stats.entries = len(self._entries)


class RedisBackend:
    """Entries in Redis (``--cache-url``), shared by every daemon pointed at it."""

    def __init__(self, url: str, ttl: float) -> None:
        import coredis
        from coredis.retry import NoRetryPolicy

        self.ttl = max(1, int(ttl))
        self.client: Any = coredis.Redis.from_url(
            url,
            stream_timeout=REDIS_TIMEOUT,
            connect_timeout=REDIS_TIMEOUT,
            retry_policy=NoRetryPolicy(),
        )

    async def _call(self, make: Any) -> Any:
        try:
            return await asyncio.wait_for(make(), REDIS_TIMEOUT * 2)
        except (Exception, TimeoutError) as exc:  # noqa: BLE001 - any failure bypasses
            raise CacheDown(f"{type(exc).__name__}: {exc}") from exc

    async def get(self, key: str) -> bytes | None:
        return await self._call(lambda: self.client.get(key))  # type: ignore[no-any-return]

    async def put(self, key: str, value: bytes) -> None:
        await self._call(lambda: self.client.set(key, value, ex=self.ttl))

    async def drop(self, digest: str) -> int:
        async def scan_and_delete() -> int:
            keys = [k async for k in self.client.scan_iter(match=f"{PREFIX}{digest}:*")]
            return int(await self.client.delete(keys)) if keys else 0

        return await self._call(scan_and_delete)  # type: ignore[no-any-return]


class ResponseCache:
    def __init__(self, backend: Backend, stats: CacheStats, kind: str) -> None:
        self.backend = backend
        self.stats = stats
        self.kind = kind  # "memory" or "redis"
        self._warned = 0.0
        self._digests: dict[str, str] = {}  # model -> the digest its entries have

    @classmethod
    def from_settings(cls, settings: Any) -> ResponseCache | None:
        from .budget import parse_budget

        stats = CacheStats()
        if settings.cache_url:
            return cls(RedisBackend(settings.cache_url, settings.cache_ttl), stats, "redis")
        if settings.response_cache:
            size = parse_budget(settings.response_cache_size)
            return cls(MemoryBackend(size, settings.cache_ttl, stats), stats, "memory")
        return None

    def _down(self, what: str, exc: CacheDown) -> None:
        self.stats.errors += 1
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning("response cache bypassed: %s failed (%s)", what, exc)

    async def lookup(self, key: str) -> list[Chunk] | None | CacheDown:
        """The stored stream, None when there is none, CacheDown when the cache could
        not be asked (the request is then served as if the cache were off)."""
        try:
            blob = await self.backend.get(key)
        except CacheDown as exc:
            self._down("a lookup", exc)
            return exc
        return None if blob is None else decode(blob)

    async def store(self, key: str, chunks: list[Chunk]) -> None:
        try:
            await self.backend.put(key, encode(chunks))
            self.stats.stores += 1
        except CacheDown as exc:
            self._down("a store", exc)

    async def invalidate(self, digest: str) -> None:
        try:
            n = await self.backend.drop(digest)
        except CacheDown as exc:
            self._down("an invalidation", exc)
            return
        if n:
            log.info("response cache: dropped %d entries of model digest %s", n, digest[:12])

    async def track(self, model: str, digest: str) -> None:
        """``model``'s entries are keyed by ``digest`` from now on: the entries of its
        file before it was replaced are dropped."""
        before = self._digests.get(model)
        if before is not None and before != digest:
            await self.invalidate(before)
        self._digests[model] = digest

    async def forget(self, model: str) -> None:
        """Drop ``model``'s entries (an operator's unload starts it afresh)."""
        digest = self._digests.pop(model, None)
        if digest is not None:
            await self.invalidate(digest)


class CachedEngine:
    """An engine behind the response cache, for one generation: the stored stream when
    the cache holds ``key``, otherwise the engine's (stored when it ends with stop or
    length). ``acquire`` gives the engine for the time of the generation (a lease on a
    local model), so a hit never loads a model; ``key`` is None for a request the cache
    does not take (it is then counted as bypassing it)."""

    def __init__(
        self,
        cache: ResponseCache,
        model: str,
        key: str | None,
        acquire: Callable[[], AbstractAsyncContextManager[EngineClient]],
        observer: Any,
    ) -> None:
        self.cache = cache
        self.model = model
        self.key = key
        self.acquire = acquire
        self.observer = observer

    async def generate(
        self, request: GenerateRequest, progress: Callable[[], None] | None = None
    ) -> ChunkStream:
        ctx = requestctx.get()
        key = self.key
        if key is not None and ctx.cache_read:
            found = await self.cache.lookup(key)
            if isinstance(found, list):
                ctx.cache_hits += 1
                self.cache.stats.hits[self.model] += 1
                seen = self.observer.generation(self.model, request.request_id)
                try:  # seen by the observer as a generation of no tokens
                    for chunk in found:
                        if chunk.finish_reason is not None:
                            seen.output(0, chunk.finish_reason)
                        yield chunk
                finally:
                    seen.closed(None)
                return
            if found is not None:  # the cache is down: served as if it were off
                key = None
        recorded: list[Chunk] | None = [] if key is not None and ctx.cache_store else None
        async with self.acquire() as engine:
            if key is None:  # counted once the model took the request
                ctx.cache_bypassed += 1
            else:
                ctx.cache_misses += 1
                self.cache.stats.misses[self.model] += 1
            gen = engine.generate(request, progress)
            try:
                async for chunk in gen:
                    if recorded is not None:
                        recorded.append(chunk)
                        if chunk.finish_reason in ("stop", "length"):  # stored before it goes out
                            await self.cache.store(key, recorded)  # type: ignore[arg-type]
                    yield chunk
            finally:
                await gen.aclose()
