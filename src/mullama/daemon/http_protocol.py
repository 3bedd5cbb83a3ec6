"""uvicorn's httptools protocol with request-header limits and read timeouts.

uvicorn bounds neither the header size nor the time a client takes to send its headers
or body on the httptools parser; a slow client (a byte every few seconds) would hold a
connection forever. This subclass answers 431 past the header limits and cuts off a
client that has not sent its headers, or then its body, within ``read_timeout``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..errors import ClientError, Unavailable
from ..requestctx import HEALTH_PATHS
from ..wire.errors import error_response, openai_body


async def over_capacity(scope: Any, receive: Any, send: Any) -> None:
    """What a request past --max-connections gets: a 503 in its API's error shape with
    Retry-After (uvicorn's own is a bare text line), and the connection is closed."""
    err = Unavailable("the server is at its connection limit (--max-connections); retry soon")
    response = error_response(scope["path"], err)
    response.headers["connection"] = "close"
    await response(scope, receive, send)


# uvicorn answers requests past its concurrency limit with this ASGI app.
httptools_impl.service_unavailable = over_capacity


class HeaderLimitExceeded(Exception):
    pass


def _response(status: bytes, message: bytes) -> bytes:
    """A raw response written before any ASGI code runs (the path is not known yet: the
    OpenAI shape, built by the one error builder)."""
    code, _, reason = status.decode().partition(" ")
    err = ClientError(message.decode(), status=int(code), code=reason.lower().replace(" ", "_"))
    body = orjson.dumps(openai_body(err))
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """The httptools protocol with the header limits and the read timeout below (set by
    ``limited_protocol``)."""

    max_header_size = 0
    max_header_count = 0
    read_timeout = 0.0
    _timer: asyncio.TimerHandle | None = None
    _header_bytes = 0
    _header_count = 0
    _too_large = False

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._header_count = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._arm()  # now the body must arrive within read_timeout
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        if path in HEALTH_PATHS and self.limit_concurrency is not None:
            # Health probes are answered even past the connection limit: an
            # orchestrator must see a busy daemon as alive, not kill it.
            limit, self.limit_concurrency = self.limit_concurrency, None
            try:
                super().on_headers_complete()
            finally:
                self.limit_concurrency = limit
            return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._too_large:
            super().send_400_response(msg)
            return
        self.transport.write(
            _response(b"431 Request Header Fields Too Large", b"request headers too large")
        )
        self.transport.close()

    def _count(self, size: int, count: int) -> None:
        self._header_bytes += size
        self._header_count += count
        too_many = self._header_count > self.max_header_count
        if self._header_bytes > self.max_header_size or too_many:
            self._too_large = True
            raise HeaderLimitExceeded()

    def _arm(self) -> None:
        self._disarm()
        self._timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _read_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_response(b"408 Request Timeout", b"request read timeout"))
        self.logger.warning("client %s too slow sending its request; closing", self.client)
        self.transport.close()


def limited_protocol(max_header_size: int, max_header_count: int, read_timeout: float) -> type:
    """uvicorn's protocol class with these limits (uvicorn makes one per connection)."""
    limits = {
        "max_header_size": max_header_size,
        "max_header_count": max_header_count,
        "read_timeout": read_timeout,
    }
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), limits)
