"""Access log, request metrics and the request span, as plain ASGI middleware (not
BaseHTTPMiddleware: that breaks streaming disconnects and context variables).

It runs inside RequestStateMiddleware, which made the request's ``RequestContext``
(requestctx.py); it opens it with the hub (active count, span) and closes it when the app
returns (after the last byte of a stream), with the status sent."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import requestctx
from .hub import Observability

CLIENT_CLOSED = 499  # nginx's code for "the client went away before the response"


def _route(scope: Scope) -> str | None:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, obs: Observability) -> None:
        self.app = app
        self.obs = obs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rec = requestctx.get()
        self.obs.start_request(rec)
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            status = status or CLIENT_CLOSED
            raise
        except BaseException:
            status = status or 500
            raise
        finally:
            self.obs.finish_request(rec, status or CLIENT_CLOSED, _route(scope))
