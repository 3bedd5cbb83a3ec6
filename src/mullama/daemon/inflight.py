"""In-flight request tracking: 503 while draining, --request-timeout, and aborting what is
left when the shutdown timeout runs out.

Each tracked request runs the app in its own task. When its deadline passes or it is
aborted, the task is cancelled (closing the engine generation cancels the sequence) and
the client gets an error: an error response if nothing was sent yet, otherwise an error
event at the end of the stream (SSE: ``data: {"error": ...}`` then ``data: [DONE]``;
NDJSON: ``{"error": "..."}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..api.errors import error_response, ndjson_error, stream_error_tail
from ..errors import MullamaError, RequestTimeout, Unavailable
from ..security.policy import request_rule
from .lifecycle import Lifecycle

log = logging.getLogger(__name__)


@dataclass
class _Response:
    started: bool = False
    finished: bool = False
    content_type: bytes = b""


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
        request_timeout: float,
    ) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.tracker = tracker
        self.request_timeout = request_timeout

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
        # Model management (pulls of big files) is not bound by the request timeout.
        timeout = self.request_timeout if rule.timed else None
        await self._run(scope, receive, send, timeout)

    async def _run(self, scope: Scope, receive: Receive, send: Send, timeout: float | None) -> None:
        state = _Response()

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.started = True
                for k, v in message.get("headers", []):
                    if k.lower() == b"content-type":
                        state.content_type = bytes(v)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state.finished = True
            await send(message)

        entry = _Entry()
        self.tracker.add(entry)
        task = asyncio.ensure_future(self.app(scope, receive, tracked_send))
        try:
            done, _ = await asyncio.wait(
                {task, entry.abort}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                task.result()
                return
            if entry.abort.done():
                err = entry.abort.result()
            else:
                err = RequestTimeout(f"the request took longer than {timeout:g} s and was stopped")
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
