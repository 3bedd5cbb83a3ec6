"""Models served by remote OpenAI-compatible engines (``--remote NAME=URL[,URL...]``):
replicas, balancing, health, and the generation and embedding calls.

Each remote model has one or more replicas (base URLs up to ``/v1``). A request goes to
the replica with the fewest requests in flight, or, when it carries a conversation key
(``X-Session-Id``, else the API key), to the replica that key hashes to (rendezvous
hashing: adding a replica moves only the keys it wins), so the engine's own prefix cache
stays warm; a replica at its in-flight limit passes the request to the key's next one.
When every replica is at its limit the request waits (at most ``--max-queue`` of them,
for at most ``--load-timeout``), then gets 503 with Retry-After, as a busy local model.

Health: a replica that refuses connections or answers 5xx is taken out at once (passive);
every ``health_interval`` each replica's health URL is asked (active), which takes it out
or brings it back. A request that failed before the upstream sent a byte is retried once
on another replica. Nothing of the upstream (its URLs, its key) reaches clients or logs:
replicas are named by their index.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import requestctx
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
)
from ..engine.remote import StreamReader, chat_body, completion_body
from ..errors import ClientError, MullamaError, Unavailable, UpstreamFailed
from .breaker import CircuitBreaker
from .upstream import ahead, error_message

log = logging.getLogger(__name__)


class RemoteOptions(BaseModel):
    """``--remote-opt NAME:key=value``: one remote model's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upstream_model: str | None = Field(None, description="the engine's model id (default: NAME)")
    api_key_file: str | None = Field(None, description="file holding the engine's API key")
    api_key_env: str | None = Field(None, description="environment variable holding it")
    timeout: float = Field(600.0, gt=0, description="seconds without a byte from the engine")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to connect")
    max_inflight: int = Field(16, ge=1, description="requests in flight per replica")
    health_path: str = Field("/health", description="health URL path from the URL's root")
    health_interval: float = Field(5.0, gt=0, description="seconds between health checks")


REMOTE_OPTION_KEYS = tuple(RemoteOptions.model_fields)


def parse_remotes(items: list[str], opts: list[str]) -> dict[str, tuple[list[str], RemoteOptions]]:
    """``["big=http://a:8000/v1,http://b:8000/v1"]`` and ``["big:max_inflight=4"]`` →
    {"big": (urls, options)}; a malformed value is a configuration error."""
    urls: dict[str, list[str]] = {}
    for item in items:
        name, sep, rest = (p.strip() for p in item.partition("="))
        if not sep or not name or not rest:
            raise ClientError(f"--remote {item!r}: expected NAME=URL[,URL...]")
        if name in urls:
            raise ClientError(f"--remote {name!r} is given twice")
        urls[name] = [_check_url(item, u.strip()) for u in rest.split(",") if u.strip()]
    values: dict[str, dict[str, Any]] = {}
    for item in opts:
        head, eq, raw = item.partition("=")  # a value may hold ':' (a model id, a path)
        name, sep, key = head.rpartition(":")
        key = key.strip().replace("-", "_")
        if not sep or not eq or not name:
            raise ClientError(f"--remote-opt {item!r}: expected NAME:key=value")
        if name.strip() not in urls:
            raise ClientError(f"--remote-opt {item!r}: there is no --remote {name.strip()!r}")
        if key not in REMOTE_OPTION_KEYS:
            raise ClientError(
                f"--remote-opt {item!r}: unknown key {key!r} "
                f"(one of {', '.join(REMOTE_OPTION_KEYS)})"
            )
        values.setdefault(name.strip(), {})[key] = raw.strip()
    out = {}
    for name, found in urls.items():
        try:
            options = RemoteOptions.model_validate(values.get(name, {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ClientError(f"--remote-opt {name}:{err['loc'][0]}: {err['msg']}") from None
        out[name] = (found, options)
    return out


def _check_url(item: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"--remote {item!r}: {url!r} is not an http(s) URL")
    return url.rstrip("/")


def _api_key(name: str, opts: RemoteOptions) -> str | None:
    if opts.api_key_file:
        try:
            return Path(opts.api_key_file).expanduser().read_text().strip() or None
        except OSError as exc:
            raise ClientError(
                f"--remote-opt {name}:api_key_file: cannot read it ({exc.strerror})"
            ) from None
    if opts.api_key_env:
        value = os.environ.get(opts.api_key_env)
        if not value:
            raise ClientError(f"--remote-opt {name}:api_key_env: ${opts.api_key_env} is not set")
        return value
    return None


@dataclass(eq=False)
class Replica:
    index: int
    base: str  # the URL up to /v1
    health_url: str
    inflight: int = 0
    healthy: bool = True
    failures: int = 0  # 5xx answers in a row
    requests: int = 0
    errors: int = 0

    @property
    def label(self) -> str:
        return str(self.index)

    def describe(self) -> dict[str, Any]:
        return {"replica": self.index, "healthy": self.healthy, "in_flight": self.inflight,
                "requests": self.requests, "errors": self.errors}  # fmt: skip


def _health_url(base: str, path: str) -> str:
    root = re.sub(r"/v1$", "", base)
    if path.startswith(("http://", "https://")):
        raise ClientError("--remote-opt health_path is a path, not a URL")
    return root + "/" + path.lstrip("/") if path.startswith("/") else base + "/" + path


def _rank(key: str, replica: Replica) -> bytes:
    return hashlib.blake2b(f"{key}\x00{replica.base}".encode(), digest_size=8).digest()


class RemoteModel:
    """One model served by remote replicas; the local ``WorkerClient``'s counterpart (an
    ``EngineClient``, engine/interface.py). The engine's facts are its own: ``info`` is
    None, and Mullama reaches no tokenizer of it."""

    info: WorkerInfo | None = None

    def __init__(
        self, name: str, urls: list[str], opts: RemoteOptions, *, max_queue: int,
        queue_timeout: float, breaker: CircuitBreaker,
    ) -> None:  # fmt: skip
        self.name = name
        self.opts = opts
        self.upstream_model = opts.upstream_model or name
        self.replicas = [
            Replica(i, u, _health_url(u, opts.health_path)) for i, u in enumerate(urls)
        ]
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.breaker = breaker
        self.observer: Any = NullObserver()
        self.waiting = 0
        self._turn = 0
        self._room = asyncio.Condition()
        self._secrets = [u for r in self.replicas for u in (r.base, r.health_url)]
        headers = {"user-agent": "mullama"}
        key = _api_key(name, opts)
        if key:
            headers["authorization"] = f"Bearer {key}"
            self._secrets.append(key)
        self._secrets.sort(key=len, reverse=True)
        self._headers_base = headers
        self._http: aiohttp.ClientSession | None = None  # made in the running loop
        self._probe: aiohttp.ClientSession | None = None  # health checks: a new connection each
        self._health: asyncio.Task[None] | None = None
        self.digest = (
            "sha256:"
            + hashlib.sha256(f"remote\x00{name}\x00{self.upstream_model}".encode()).hexdigest()
        )

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def http(self) -> aiohttp.ClientSession:
        """The upstream connections (aiohttp: about half httpx's CPU per streamed token)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(
                headers=self._headers_base,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.opts.connect_timeout, sock_read=self.opts.timeout
                ),
                # Idle connections are dropped before the engines' own keep-alive (5 s for
                # uvicorn's vLLM and for llama-server) closes them under a request.
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=4),
                read_bufsize=1 << 20,  # an SSE line up to 1 MiB (a long tool call, logprobs)
                raise_for_status=False,
                auto_decompress=True,
            )
        return self._http

    def start(self) -> None:
        if self._health is None:
            self._health = asyncio.create_task(self._health_loop(), name=f"health {self.name}")

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        for session in (self._http, self._probe):
            if session is not None:
                await session.close()

    async def _health_loop(self) -> None:
        while True:
            try:
                await asyncio.gather(*(self.check(r) for r in self.replicas))
            except Exception:  # noqa: BLE001 - the checks go on whatever one of them met
                log.exception("remote model %s: a health check failed", self.name)
            await asyncio.sleep(self.opts.health_interval)

    async def check(self, replica: Replica) -> bool:
        """One active health check: the replica's health URL answers 2xx."""
        if self._probe is None:
            self._probe = aiohttp.ClientSession(
                headers=self._headers_base,
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=self.opts.connect_timeout),
            )
        try:
            async with self._probe.get(replica.health_url) as response:
                ok = 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        self._set_health(replica, ok, "health check" if not ok else "")
        return ok

    def _set_health(self, replica: Replica, ok: bool, why: str) -> None:
        if ok:
            replica.failures = 0
        if ok != replica.healthy:
            replica.healthy = ok
            if ok:
                log.info("remote model %s: replica %d is back in", self.name, replica.index)
            else:
                log.warning("remote model %s: replica %d taken out (%s)", self.name,
                            replica.index, why)  # fmt: skip
            if ok:
                asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._room:
            self._room.notify_all()

    # ---- choosing a replica -------------------------------------------------------------

    @property
    def limit(self) -> int:
        return self.opts.max_inflight

    def _pick(self, key: str | None, exclude: set[Replica]) -> Replica | None:
        ready = [r for r in self.replicas if r.healthy and r not in exclude]
        if key is not None:
            ready.sort(key=lambda r: _rank(key, r), reverse=True)
            return next((r for r in ready if r.inflight < self.limit), None)
        free = [r for r in ready if r.inflight < self.limit]
        if not free:
            return None
        # The fewest in flight; ties taken in turn (a replica back from an outage is
        # not flooded, nor starved, for the requests it missed).
        self._turn += 1
        n = len(self.replicas)
        return min(free, key=lambda r: (r.inflight, (r.index - self._turn) % n))

    async def acquire(self, key: str | None, exclude: set[Replica]) -> Replica:
        """A replica with room for one more request (waiting for one when all are busy)."""
        deadline = time.monotonic() + self.queue_timeout
        queued = False
        try:
            while True:
                replica = self._pick(key, exclude)
                if replica is not None:
                    replica.inflight += 1
                    replica.requests += 1
                    return replica
                if not any(r.healthy and r not in exclude for r in self.replicas):
                    raise Unavailable(
                        f"model {self.name!r}: no replica of its remote engine is reachable",
                        retry_after=max(1, round(self.opts.health_interval)),
                    )
                if not queued:
                    if self.waiting >= self.max_queue:
                        raise self._busy()
                    self.waiting += 1
                    queued = True
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._busy()
                async with self._room:  # woken by a release; at worst, looked again in 0.5 s
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), min(left, 0.5))
        finally:
            if queued:
                self.waiting -= 1

    def _busy(self) -> Unavailable:
        inflight = sum(r.inflight for r in self.replicas)
        return Unavailable(
            f"model {self.name!r} is busy: {inflight} requests in flight on its remote "
            f"engine, queue limit {self.max_queue}",
            retry_after=2,
        )

    def release(self, replica: Replica) -> None:
        replica.inflight -= 1
        if self.waiting:
            asyncio.ensure_future(self._notify())

    # ---- calls -------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        ctx = requestctx.get()
        return {"traceparent": ctx.traceparent} if ctx.traceparent else {}

    def _scrub(self, text: str) -> str:
        """``text`` without the upstream's URLs, hosts and key."""
        for secret in self._secrets:
            text = text.replace(secret, "[upstream]")
        for r in self.replicas:
            host = urlsplit(r.base).netloc
            text = text.replace(host, "[upstream]")
        return text

    async def _error(self, replica: Replica, response: aiohttp.ClientResponse) -> MullamaError:
        """An upstream error answer as the client's error (the upstream's own message for
        a request it refused; its failures as 502)."""
        try:
            raw = await response.content.read(1 << 16)
        except (aiohttp.ClientError, TimeoutError):
            raw = b""
        finally:
            response.close()
        message = error_message(raw)
        status = response.status
        if status == 429:
            return Unavailable(f"model {self.name!r}: its remote engine is over its limits",
                               retry_after=2)  # fmt: skip
        if status in (401, 403):
            return UpstreamFailed(f"model {self.name!r}: the remote engine refused Mullama's "
                                  f"credentials (status {status})")  # fmt: skip
        if status == 404:
            return UpstreamFailed(f"model {self.name!r}: the remote engine does not serve "
                                  f"{self.upstream_model!r} (status 404)")  # fmt: skip
        if 400 <= status < 500:
            out = ClientError(self._scrub(message) or f"the remote engine refused the request "
                              f"(status {status})")  # fmt: skip
            out.status = 400 if status == 422 else status
            return out
        replica.errors += 1
        return UpstreamFailed(
            f"model {self.name!r}: replica {replica.index} of its remote engine failed "
            f"(status {status})"
        )

    async def _open(
        self, path: str, body: dict[str, Any]
    ) -> tuple[Replica, aiohttp.ClientResponse, float]:
        """Send ``body`` to a replica and wait for its answer's headers; a failure before
        any byte (refused, reset, 5xx, 429) is retried once on another replica."""
        key = requestctx.get().affinity
        tried: set[Replica] = set()
        payload = orjson.dumps(body)
        headers = {"content-type": "application/json", **self._headers()}
        error: MullamaError | None = None
        failed, stale = 0, 0
        while failed < 2:
            started = time.perf_counter()
            try:
                replica = await self.acquire(key, tried)
            except Unavailable:
                if error is not None:
                    raise error from None
                raise
            try:
                response = await self.http.post(replica.base + path, data=payload, headers=headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.release(replica)
                if not isinstance(exc, aiohttp.ClientConnectorError | TimeoutError) and not stale:
                    # A kept connection the engine had closed meanwhile: once more, on a new
                    # connection, without counting it against the replica or the retry.
                    stale += 1
                    self.observer.replica_request(self.name, replica.label, "reconnect", None, 0)
                    continue
                failed += 1
                replica.errors += 1
                tried.add(replica)  # it cannot be reached: out until a health check passes
                self._set_health(replica, False, type(exc).__name__)
                self.observer.replica_request(self.name, replica.label, "connect_error", None, 0)
                error = UpstreamFailed(
                    f"model {self.name!r}: replica {replica.index} of its remote engine cannot "
                    f"be reached ({type(exc).__name__})"
                )
                continue
            except BaseException:
                self.release(replica)
                raise
            status = response.status
            if 200 <= status < 300:
                return replica, response, started
            failed += 1
            tried.add(replica)
            self.release(replica)
            error = await self._error(replica, response)
            self.observer.replica_request(self.name, replica.label, str(status), None, 0)
            if status >= 500:
                replica.failures += 1
                if replica.failures >= 3:
                    self._set_health(replica, False, f"status {status}")
            if status < 500 and status != 429:
                raise error
        assert error is not None
        raise error

    async def generate(
        self, request: GenerateRequest, progress: Callable[[], None] | None = None
    ) -> ChunkStream:
        """Yields an empty chunk once the upstream took the request, then text deltas, the
        last one with finish_reason and the upstream's usage (the WorkerClient contract);
        ``progress`` is called at each event from the upstream."""
        chat = request.messages is not None
        build = chat_body if chat else completion_body
        body = build(request, self.name, self.upstream_model)
        obs = self.observer.generation(self.name, request.request_id)
        error: BaseException | None = None
        response: aiohttp.ClientResponse | None = None
        replica: Replica | None = None
        first: float | None = None
        reader = StreamReader(chat)
        outcome = "cancelled"
        try:
            replica, response, started = await _unserved_on_error(
                self._open("/chat/completions" if chat else "/completions", body)
            )
            obs.admitted(0.0, 0)
            yield Chunk()
            async for event in ahead(self._events(replica, response)):
                if progress is not None:
                    progress()
                chunk = reader.read(event)
                if chunk is not None:
                    if first is None:
                        first = time.perf_counter() - started
                    obs.output(chunk.completion_tokens, None)
                    yield chunk
            last = reader.last()
            obs.accepted(last.prompt_tokens)
            obs.output(last.completion_tokens, last.finish_reason)
            outcome = "ok"
            yield last
        except BaseException as exc:
            error = exc
            if isinstance(exc, MullamaError):
                outcome = "error"
            raise
        finally:
            if response is not None:
                if outcome == "ok":
                    response.release()  # read to its end: the connection is kept for reuse
                else:  # early: the connection goes, and the engine frees the sequence
                    response.close()
            if replica is not None:
                self.release(replica)
                self.observer.replica_request(self.name, replica.label, outcome, first, reader.n)
            obs.closed(error)

    async def _events(
        self, replica: Replica, response: aiohttp.ClientResponse
    ) -> AsyncIterator[dict[str, Any]]:
        """The upstream's server-sent events, parsed; a broken stream, or an error event,
        is an UpstreamFailed (or the upstream's refusal)."""
        try:
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    # The body's end too, so that the connection goes back to the pool.
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with asyncio.timeout(self.opts.connect_timeout):
                            await response.content.read()
                    return
                event = orjson.loads(data)
                if isinstance(event, dict) and "error" in event:
                    raise UpstreamFailed(
                        f"model {self.name!r}: its remote engine failed mid-answer: "
                        f"{self._scrub(error_message(data))}"
                    )
                yield event
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # JSON, a line too long
            replica.errors += 1
            if isinstance(exc, aiohttp.ClientConnectionError | TimeoutError):
                self._set_health(replica, False, type(exc).__name__)
            raise UpstreamFailed(
                f"model {self.name!r}: replica {replica.index} of its remote engine broke off "
                f"the answer ({type(exc).__name__})"
            ) from None

    async def embed(
        self, inputs: list[str], truncate: bool = False, norm: int = 2, per_token: bool = False
    ) -> Embeddings:
        if norm != 2 or per_token:
            raise self._refused("an embedding other than one unit-length vector an input")
        body = {"model": self.upstream_model, "input": inputs}
        replica, response, started = await _unserved_on_error(self._open("/embeddings", body))
        try:
            data = orjson.loads(await response.read())
            vectors = [item["embedding"] for item in sorted(data["data"], key=lambda d: d["index"])]
            tokens = int((data.get("usage") or {}).get("prompt_tokens") or 0)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            raise UpstreamFailed(
                f"model {self.name!r}: replica {replica.index} of its remote engine sent no "
                f"embeddings ({type(exc).__name__})"
            ) from None
        finally:
            response.release()
            self.release(replica)
        self.observer.replica_request(self.name, replica.label, "ok",
                                      time.perf_counter() - started, 0)  # fmt: skip
        self.observer.embedded(self.name, tokens)
        return Embeddings(vectors, tokens)

    async def rank(self, query: str, documents: list[str]) -> Ranked:
        raise self._refused("ranking with a reranker's own scores")

    async def tokenize(self, request: TokenizeRequest) -> Tokens:
        raise self._refused("tokenizing")

    async def detokenize(self, tokens: list[int]) -> str:
        raise self._refused("detokenizing")

    def _refused(self, what: str) -> ClientError:
        return ClientError(
            f"model {self.name!r} is served by a remote engine: {what} is not available for it",
            param="model",
        )

    # ---- reports ----------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return sum(r.inflight for r in self.replicas)

    def describe(self) -> dict[str, Any]:
        return {
            "remote": True,
            "upstream_model": self.upstream_model,
            "replicas": [r.describe() for r in self.replicas],
            "in_flight": self.inflight,
            "queued": self.waiting,
        }


async def _unserved_on_error(opening: Any) -> Any:
    """An error raised before a replica took the request (none reachable, all busy, each
    failed before a byte) is ``unserved``: a --fallback model may answer instead."""
    try:
        return await opening
    except MullamaError as exc:
        if not isinstance(exc, ClientError):
            exc.unserved = True
        raise
