"""Access log, request metrics and the request span, as plain ASGI middleware (not
BaseHTTPMiddleware: that breaks streaming disconnects and context variables).

It runs inside RequestIdMiddleware (the request id is in ``scope["state"]``), creates the
request's record, puts it in the ``current_request`` context variable for the engine
observer, and closes it when the app returns (after the last byte of a stream)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .hub import Observability
from .requests import current_request

CLIENT_CLOSED = 499  # nginx's code for "the client went away before the response"


def _client(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return ""
    host, port = client[0], client[1]
    return f"{host}:{port}" if port else str(host)


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
        state = scope.setdefault("state", {})
        rec = self.obs.start_request(
            scope["method"], scope["path"], str(state.get("request_id", "")), _client(scope)
        )
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        token = current_request.set(rec)
        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            status = status or CLIENT_CLOSED
            raise
        except BaseException:
            status = status or 500
            raise
        finally:
            current_request.reset(token)
            self.obs.finish_request(rec, status or CLIENT_CLOSED, _route(scope))
