"""In-flight request tracking: 503 while draining, the request timeouts, and aborting what
is left when the shutdown timeout runs out.

Each tracked request runs the app in its own task. When its deadline passes or it is
aborted, the task is cancelled (closing the engine generation cancels the sequence) and
the client gets an error: an error response if nothing was sent yet, otherwise an error
event at the end of the stream (SSE: ``data: {"error": ...}`` then ``data: [DONE]``;
NDJSON: ``{"error": "..."}``).

The deadlines: a request has --request-timeout until its response starts, and a
non-streamed one until it ends. A streamed response (SSE or NDJSON) is not bound by it:
an agent on a slow CPU streams answers for many minutes, and a stream that still makes
progress is never cut. It ends when it makes no progress for --stream-idle-timeout, and
(when set) after --stream-timeout in all. Progress (requestctx.Progress) is a body chunk
sent, or a step of the engine that holds the request's generation: its prompt being
computed (a long prompt sends nothing for a while, but every chunk of it is a step), its
tokens (held back or not: a stop string being matched, a tool call being parsed), or the
answers ahead of it in the queue. So a request that waits for a slot is not idle while
the engine works through the queue; each answer ahead ends (at its max_tokens or its
context), and --stream-timeout caps the wait where that is wanted. Idle means an engine
that does nothing: stopped, hung, or one decode step longer than the idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import requestctx
from ..errors import MullamaError, RequestTimeout, Unavailable
from ..security.policy import request_rule
from ..wire.errors import error_response, ndjson_error, stream_error_tail
from .lifecycle import Lifecycle

log = logging.getLogger(__name__)


_STREAMS = (b"text/event-stream", b"application/x-ndjson")


@dataclass
class _Response:
    started: bool = False
    finished: bool = False
    content_type: bytes = b""
    # Done when the response starts: a stream's deadline changes then.
    began: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def streaming(self) -> bool:
        return self.started and self.content_type.startswith(_STREAMS)


@dataclass(frozen=True)
class Timeouts:
    """--request-timeout, --stream-idle-timeout, --stream-timeout (0: none)."""

    request: float = 300.0
    stream_idle: float = 300.0
    stream: float = 0.0

    def left(self, state: _Response, progress: requestctx.Progress, started: float) -> float:
        """Seconds until the request's deadline (0 or less: passed)."""
        now = time.monotonic()
        if not state.streaming:
            return started + self.request - now
        left = progress.at + self.stream_idle - now
        if self.stream:
            left = min(left, started + self.stream - now)
        return left

    def error(self, state: _Response, progress: requestctx.Progress) -> RequestTimeout:
        if not state.streaming:
            return RequestTimeout(
                f"the request took longer than {self.request:g} s and was stopped"
            )
        if time.monotonic() - progress.at >= self.stream_idle:
            return RequestTimeout(
                f"the stream made no progress for {self.stream_idle:g} s (nothing generated, "
                "computed or sent; --stream-idle-timeout) and was stopped"
            )
        return RequestTimeout(
            f"the stream ran longer than {self.stream:g} s (--stream-timeout) and was stopped"
        )


@dataclass(eq=False)
class _Entry:
    abort: asyncio.Future[MullamaError] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class InflightTracker:
    """The set of running requests; shutdown waits for it to empty, then aborts the rest."""

    def __init__(self) -> None:
        self._active: set[_Entry] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._active)

    def add(self, entry: _Entry) -> None:
        self._active.add(entry)
        self._idle.clear()

    def discard(self, entry: _Entry) -> None:
        self._active.discard(entry)
        if not self._active:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def abort_all(self, err: MullamaError) -> int:
        n = 0
        for entry in list(self._active):
            if not entry.abort.done():
                entry.abort.set_result(err)
                n += 1
        return n


class InflightMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        lifecycle: Lifecycle,
        tracker: InflightTracker,
        timeouts: Timeouts,
    ) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.tracker = tracker
        self.timeouts = timeouts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = request_rule(scope)
        if scope["type"] != "http" or rule.lifecycle_exempt:
            await self.app(scope, receive, send)
            return
        if not self.lifecycle.accepting:
            err = Unavailable(
                "the daemon is shutting down; retry on another instance", retry_after=5
            )
            resp = error_response(scope["path"], err)
            resp.headers["Connection"] = "close"
            await resp(scope, receive, send)
            return
        # Model management (pulls of big files) is not bound by the request timeouts.
        await self._run(scope, receive, send, self.timeouts if rule.timed else None)

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, timeouts: Timeouts | None
    ) -> None:
        state = _Response()
        progress = requestctx.Progress()

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.started = True
                if not state.began.done():
                    state.began.set_result(None)
                for k, v in message.get("headers", []):
                    if k.lower() == b"content-type":
                        state.content_type = bytes(v)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state.finished = True
            progress.mark()
            await send(message)

        entry = _Entry()
        self.tracker.add(entry)
        requestctx.get().progress = progress  # the engines mark it (progress_marker)
        task = asyncio.ensure_future(self.app(scope, receive, tracked_send))
        try:
            err = await _watch(task, entry, state, progress, timeouts)
            if err is None:
                task.result()
                return
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            log.warning("%s %s stopped: %s", scope.get("method"), scope["path"], err.message)
            await _send_error(scope, receive, send, state, err)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            if not entry.abort.done():
                entry.abort.cancel()
            self.tracker.discard(entry)


async def _watch(
    task: asyncio.Future[None],
    entry: _Entry,
    state: _Response,
    progress: requestctx.Progress,
    timeouts: Timeouts | None,
) -> MullamaError | None:
    """None once the request's task is done; else why it must stop (aborted, or past its
    deadline). The deadline is computed again when a wait runs out (progress meanwhile
    moved it on) and when the response starts (a stream is bound by the idle timeout)."""
    started = time.monotonic()
    while True:
        waits: set[asyncio.Future[Any]] = {task, entry.abort}
        if not state.began.done():
            waits.add(state.began)
        left = None if timeouts is None else max(0.0, timeouts.left(state, progress, started))
        done, _ = await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return None
        if entry.abort.done():
            return entry.abort.result()
        if timeouts is not None and timeouts.left(state, progress, started) <= 0:
            return timeouts.error(state, progress)


async def _send_error(
    scope: Scope, receive: Receive, send: Send, state: _Response, err: MullamaError
) -> None:
    if state.finished:
        return
    if not state.started:
        await error_response(scope["path"], err)(scope, receive, send)
        return
    tail = b""
    if state.content_type.startswith(b"text/event-stream"):
        tail = stream_error_tail(scope["path"], err)
    elif state.content_type.startswith(b"application/x-ndjson"):
        tail = ndjson_error(err)
    with contextlib.suppress(OSError):
        await send({"type": "http.response.body", "body": tail, "more_body": False})
