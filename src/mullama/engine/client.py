"""Daemon side of the engine: spawns a worker process and multiplexes requests over it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from ..errors import EngineCrashed, ModelUnloaded, MullamaError, ServerError
from .messages import (
    HEADER_SIZE,
    Accepted,
    Cancel,
    DetokenizeRequest,
    EmbedRequest,
    EmbedResult,
    Failed,
    LoadFailed,
    Ping,
    Pong,
    RankRequest,
    RankResult,
    Ready,
    Reply,
    Shutdown,
    Step,
    StepRow,
    Text,
    decode_header,
    encode_frame,
    read_event,
)
from .protocol import (
    Chunk,
    ChunkStream,
    Embeddings,
    EngineObserver,
    GenerateRequest,
    GenerationObserver,
    ModelStats,
    NullGenerationObserver,
    NullObserver,
    ProtocolError,
    Ranked,
    TokenizeRequest,
    Tokens,
    WorkerInfo,
    WorkerSpec,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


# What a request's queue receives: a step's row for it, its acceptance, an embedding
# result, or the error that ends it.
_Item = StepRow | Accepted | EmbedResult | RankResult | Tokens | Text | MullamaError


@dataclass
class _Stream:
    queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    done: bool = False
    obs: GenerationObserver = field(default_factory=NullGenerationObserver)
    cached: int = 0  # prompt tokens the worker found in the KV cache
    prompt: int = 0  # prompt tokens, once accepted
    generated: int = 0  # tokens generated so far
    progress: Callable[[], None] | None = None  # called at each step of the engine


class WorkerClient:
    """One model, one worker process: a local model's ``EngineClient`` (engine/interface.py).
    Restarts the worker on the next request after a crash."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.name = spec.name
        self.spec = spec
        self.info: WorkerInfo | None = None
        self.load_seconds_total = 0.0  # spawn to ready, as the daemon saw it
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._streams: dict[str, _Stream] = {}
        self._start_lock = asyncio.Lock()
        self._stats = ModelStats()
        self._seq = 0
        self._closing = False
        self.restarts = 0
        # Metrics/logs/tracing hooks; the daemon sets a real one (engine/ stays plain).
        self.observer: EngineObserver = NullObserver()

    # ---- lifecycle ------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._writer is not None and self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def ensure_started(self) -> None:
        if self.alive:
            return
        async with self._start_lock:
            if not self.alive:
                started = time.monotonic()
                try:
                    await self._spawn()
                except Exception as exc:
                    self.observer.loaded(self.name, time.monotonic() - started, exc)
                    raise
                self.observer.loaded(self.name, time.monotonic() - started, None)

    async def _spawn(self) -> None:
        parent, child = socket.socketpair()
        spec = orjson.dumps(self.spec.to_wire()).decode()
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mullama.engine.worker",
                "--fd",
                str(child.fileno()),
                "--spec",
                spec,
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        try:
            msg = await asyncio.wait_for(_read_frame(reader), self.spec.load_timeout)
            first = read_event(msg)
            if not isinstance(first, Ready | LoadFailed):
                raise ProtocolError(f"the worker's first frame is {msg.get('ev')!r}, not 'ready'")
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ProtocolError) as exc:
            if isinstance(exc, ProtocolError):
                log.error("%s", exc)
            writer.close()
            _kill(proc)
            await proc.wait()
            raise ServerError(
                f"model {self.name!r} failed to load: the engine process exited"
                f" (code {proc.returncode})"
            ) from exc
        if isinstance(first, LoadFailed):
            writer.close()
            await proc.wait()
            raise first.error
        self.info = first.info
        self.load_seconds_total = time.monotonic() - started
        self._closing = False
        self._proc = proc
        self._writer = writer
        self._stats = ModelStats(kv_size=first.info.kv_size, threads=first.info.threads)
        self._reader_task = asyncio.create_task(self._read_loop(reader), name=f"engine:{self.name}")
        log.info(
            "model %s loaded in worker pid %d (%.2fs)",
            self.name,
            proc.pid,
            self.load_seconds_total,
        )

    async def close(self, timeout: float | None = None) -> None:
        """Stop the worker on purpose (unload); its in-flight requests fail. A worker that
        saves conversations to disk first (--session-disk) gets longer to exit."""
        if timeout is None:
            timeout = 5.0 + (60.0 if self.spec.session_disk else 0.0)
        self._closing = True
        proc, writer = self._proc, self._writer
        self._writer = None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.write(encode_frame(Shutdown().to_wire()))
                await writer.drain()
                writer.close()
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                _kill(proc)
                await proc.wait()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        self._fail_streams(ModelUnloaded(f"model {self.name!r} was unloaded"))

    # ---- reading frames from the worker -----------------------------------------

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                self._dispatch(await _read_frame(reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            return
        except Exception:  # noqa: BLE001
            log.exception("engine channel for %s broke", self.name)
        proc = self._proc
        code = None
        if proc is not None:
            with contextlib.suppress(Exception):
                code = await asyncio.wait_for(proc.wait(), 5)
        self._writer = None
        self._stats = ModelStats(kv_size=self._stats.kv_size)
        if self._closing:
            self._fail_streams(ModelUnloaded(f"model {self.name!r} was unloaded"))
            return
        log.error("engine worker for model %s exited (code %s)", self.name, code)
        self.restarts += 1
        self._fail_streams(
            EngineCrashed(
                f"the engine process for model {self.name!r} stopped unexpectedly"
                f" (exit code {code}); it will be restarted on the next request"
            )
        )

    def _fail_streams(self, err: MullamaError) -> None:
        for stream in self._streams.values():
            stream.queue.put_nowait(err)
        self._streams.clear()

    def _dispatch(self, msg: Any) -> None:
        try:
            event = read_event(msg)
        except ProtocolError as exc:
            log.error("%s", exc)  # a bug or a version mismatch: the request it names fails
            sid = msg.get("id") if isinstance(msg, dict) else None
            stream = self._streams.get(sid) if isinstance(sid, str) else None
            if stream is not None:
                stream.queue.put_nowait(ServerError(f"the engine sent a malformed reply: {exc}"))
            return
        if isinstance(event, Step):
            streams = self._streams
            # Every step is progress for every generation: its prompt computed, its tokens,
            # or the answers it waits behind (the stream idle timeout, daemon/inflight.py).
            for stream in streams.values():
                if stream.progress is not None:
                    stream.progress()
            for sid, wait, reused in event.admitted:
                stream = streams.get(sid)
                if stream is not None:
                    stream.cached = reused
                    stream.obs.admitted(wait, reused)
            for row in event.rows:
                stream = streams.get(row.id)
                if stream is not None:
                    stream.generated = row.n_generated
                    stream.obs.output(row.n_generated, row.finish)
                    stream.queue.put_nowait(row)
            st = self._stats
            st.active, st.queued, st.kv_used = event.active, event.queued, event.kv_used
            st.generated_total, st.threads = event.generated_total, event.threads
            if event.cache is not None:
                st.cache = event.cache
                self.observer.kv_cache(self.name, event.cache)
        elif isinstance(event, Reply):
            stream = self._streams.get(event.id)
            if stream is None:
                return
            if isinstance(event, Failed):
                stream.queue.put_nowait(event.error)
                return
            if isinstance(event, Accepted):
                stream.prompt = event.prompt_tokens
                stream.obs.accepted(event.prompt_tokens)
            stream.queue.put_nowait(event)
        else:
            log.error("unexpected %s frame from the worker of %s", type(event).__name__, self.name)

    # ---- generate / embed / stats ---------------------------------------------------

    def stats(self) -> ModelStats:
        return self._stats

    def slots(self) -> list[dict[str, Any]]:
        """What each KV slot is doing, for status pages: idle (with the tokens it keeps
        for reuse), prefill (admitted, no token out yet) or decoding (tokens so far)."""
        if not self.alive:
            return []
        report = self._stats.cache
        if report is None:  # nothing ran yet
            return [{"slot": i, "state": "idle", "tokens": 0} for i in range(self.spec.parallel)]
        ids = report.slot_ids or [None] * len(report.slots)
        out = []
        for index, (tokens, sid) in enumerate(zip(report.slots, ids, strict=False)):
            stream = None if sid is None else self._streams.get(sid)
            if stream is None:
                out.append({"slot": index, "state": "idle", "tokens": tokens})
                continue
            out.append({
                "slot": index,
                "state": "decoding" if stream.generated else "prefill",
                "tokens": stream.prompt + stream.generated,
                "prompt_tokens": stream.prompt,
                "generated": stream.generated,
            })  # fmt: skip
        return out

    def _send(self, wire: dict[str, Any]) -> None:
        writer = self._writer
        if writer is None:
            raise ModelUnloaded(f"the engine process for model {self.name!r} is not running")
        writer.write(encode_frame(wire))

    def _new_id(self, hint: str) -> str:
        self._seq += 1
        return f"{hint}#{self._seq}"

    async def generate(
        self, request: GenerateRequest, progress: Callable[[], None] | None = None
    ) -> ChunkStream:
        """Yields a first empty chunk carrying prompt_tokens once the worker accepted the
        request, then text deltas, the last one with finish_reason set. ``progress`` is
        called at each step of the engine while the generation is open."""
        await self.ensure_started()
        sid = self._new_id(request.request_id)
        stream = _Stream(
            obs=self.observer.generation(self.name, request.request_id), progress=progress
        )
        self._streams[sid] = stream
        wire = request.to_wire(sid)
        error: BaseException | None = None
        try:
            self._send(wire)
            while True:
                item = await stream.queue.get()
                if isinstance(item, StepRow):
                    if item.finish is not None:
                        stream.done = True
                    yield Chunk(
                        item.text,
                        item.n_generated,
                        item.n_prompt,
                        item.finish,
                        item.logprobs,
                        item.stop,
                        stream.cached,
                        reasoning=item.reasoning,
                        reasoning_tokens=item.n_reasoning,
                    )
                    if item.finish is not None:
                        return
                elif isinstance(item, Accepted):
                    yield Chunk(prompt_tokens=item.prompt_tokens, max_tokens=item.max_tokens,
                                clamped=item.clamped)  # fmt: skip
                else:
                    stream.done = True
                    raise item if isinstance(item, MullamaError) else _unexpected(item)
        except BaseException as exc:
            error = exc
            raise
        finally:
            stream.obs.closed(error)
            self._streams.pop(sid, None)
            if not stream.done and self._writer is not None:
                with contextlib.suppress(Exception):
                    self._send(Cancel(sid).to_wire())

    async def _ask(self, hint: str, make: Any, kind: type[T]) -> T:
        """One request, one reply of type ``kind`` (or the error that answers it)."""
        await self.ensure_started()
        sid = self._new_id(hint)
        stream = _Stream()
        self._streams[sid] = stream
        try:
            self._send(make(sid).to_wire())
            item = await stream.queue.get()
        finally:
            self._streams.pop(sid, None)
        if not isinstance(item, kind):
            raise item if isinstance(item, MullamaError) else _unexpected(item)
        return item

    async def ping(self, timeout: float) -> float:
        """The round trip to the worker's reader thread, in seconds (never starts a
        worker); TimeoutError when it does not answer in time: stopped, or hung."""
        if not self.alive:
            raise ModelUnloaded(f"the engine process for model {self.name!r} is not running")
        sid = self._new_id("ping")
        stream = _Stream()
        self._streams[sid] = stream
        started = time.perf_counter()
        try:
            self._send(Ping(sid).to_wire())
            item = await asyncio.wait_for(stream.queue.get(), timeout)
        finally:
            self._streams.pop(sid, None)
        if not isinstance(item, Pong):
            raise item if isinstance(item, MullamaError) else _unexpected(item)
        return time.perf_counter() - started

    async def embed(
        self, inputs: list[str], truncate: bool = False, norm: int = 2, per_token: bool = False
    ) -> Embeddings:
        result = await self._ask(
            "embed", lambda sid: EmbedRequest(sid, inputs, truncate, norm, per_token), EmbedResult
        )
        self.observer.embedded(self.name, result.tokens)
        return Embeddings(result.vectors, result.tokens, result.truncated, result.token_vectors)

    async def rank(self, query: str, documents: list[str]) -> Ranked:
        result = await self._ask("rank", lambda sid: RankRequest(sid, query, documents), RankResult)
        self.observer.embedded(self.name, result.tokens)
        return Ranked(result.scores, result.tokens)

    async def tokenize(self, request: TokenizeRequest) -> Tokens:
        """``request.id`` is set here (the socket's own id)."""

        def make(sid: str) -> TokenizeRequest:
            request.id = sid
            return request

        return await self._ask("tokenize", make, Tokens)

    async def detokenize(self, tokens: list[int]) -> str:
        reply = await self._ask("detokenize", lambda sid: DetokenizeRequest(sid, tokens), Text)
        return reply.text


def _unexpected(item: object) -> ServerError:
    return ServerError(f"the engine answered with an unexpected {type(item).__name__}")


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    header = await reader.readexactly(HEADER_SIZE)
    body = await reader.readexactly(decode_header(header))
    return orjson.loads(body)


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
