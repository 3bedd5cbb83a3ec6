"""Plain ASGI middleware (no BaseHTTPMiddleware: it breaks streaming disconnects)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import requestctx
from ..errors import PayloadTooLarge
from ..observability.metrics import Metrics
from ..security.tenancy import CacheTenancy
from ..wire.errors import error_body

log = logging.getLogger(__name__)

# The API a path belongs to, for the ignored-fields counter (first match wins).
_APIS = (("/v1/messages", "anthropic"), ("/v1/responses", "responses"), ("/api/", "ollama"),
         ("/v1/tokenize", "tokenizer"), ("/v1/detokenize", "tokenizer"), ("/v1/", "openai"),
         ("/completion", "llamaserver"), ("/tokenize", "tokenizer"),
         ("/detokenize", "tokenizer"))  # fmt: skip


def api_of(path: str) -> str:
    return next((api for prefix, api in _APIS if path.startswith(prefix)), "other")


def adding_headers(send: Send, extra: Callable[[], list[tuple[bytes, bytes]]]) -> Send:
    """``send`` with ``extra()`` (asked when the response starts) added to the headers."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = extra()
            if headers:
                message["headers"] = [*message.get("headers", []), *headers]
        await send(message)

    return wrapped


class RequestStateMiddleware:
    """The outermost layer: the request's id (X-Request-ID honoured, else made; returned
    on the response) and its one ``RequestContext`` (requestctx.py), made from its scope
    and headers and put in ``requestctx.current`` for every layer below."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")[:128]
                break
        if not rid or not rid.isprintable():
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        header = [(b"x-request-id", rid.encode("latin-1"))]
        token = requestctx.current.set(requestctx.RequestContext.from_scope(scope, rid))
        try:
            await self.app(scope, receive, adding_headers(send, lambda: header))
        finally:
            requestctx.current.reset(token)


class CallerContextMiddleware:
    """Completes the request's context with what the guards established: its caller's
    cache tenant (it runs inside the auth middleware, which stored the caller) and
    --strict-fields; what the layers below recorded in it (X-Mullama-Cache,
    X-Mullama-Fallback, Mullama-Ignored-Fields) goes out with the response's headers, and
    the fields accepted without being acted on are logged (debug) and counted."""

    def __init__(
        self,
        app: ASGIApp,
        tenancy: CacheTenancy | None = None,
        strict_fields: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.tenancy = tenancy
        self.strict_fields = strict_fields
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = requestctx.get()
        ctx.strict_fields = self.strict_fields
        if self.tenancy is not None:
            ctx.cache_tenant = self.tenancy.tenant(scope.get("state", {}).get("principal"))
        try:
            await self.app(scope, receive, adding_headers(send, ctx.response_headers))
        finally:
            if ctx.ignored:
                self._report(scope["path"], ctx)

    def _report(self, path: str, ctx: requestctx.RequestContext) -> None:
        api = api_of(path)
        log.debug("%s %s: accepted and ignored: %s", api, path, ", ".join(ctx.ignored))
        if self.metrics is not None:
            self.metrics.ignored(api, ctx.ignored)


class BodyLimitMiddleware:
    """413 for bodies over the limit: at once when Content-Length says so, otherwise as
    soon as the bytes received pass it (the rest is never read)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await _send_413(scope, send, limit)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"request body is larger than {limit} bytes")
            return message

        await self.app(scope, limited, send)


async def _send_413(scope: Scope, send: Send, limit: int) -> None:
    err = PayloadTooLarge(f"request body is larger than {limit} bytes")
    body = orjson.dumps(error_body(scope["path"], err))
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
