"""What one HTTP request asks of the layers below the API, and what they report back.

``RequestContextMiddleware`` (daemon/middleware.py) reads the request's headers into a
:class:`RequestContext`, puts it in the ``current`` context variable for the request's
task (and the tasks started from it), and adds the headers it collected to the response
when the response starts. The model manager reads the cache policy and records cache
hits; the fallback router (api/fallback.py) records which model answered.
"""

from __future__ import annotations

import contextvars
import hashlib
from dataclasses import dataclass

FALLBACK_HEADER = "x-mullama-fallback"
CACHE_HEADER = "x-mullama-cache"


@dataclass(eq=False)
class RequestContext:
    cache_read: bool = True  # Cache-Control: no-cache / no-store turn these off
    cache_store: bool = True  # no-store
    fallback: bool = True  # X-Mullama-Fallback: off (or "fallback": false in the body)
    cache_hits: int = 0
    cache_misses: int = 0
    cache_bypassed: int = 0
    fallback_path: str | None = None  # "PRIMARY->BACKUP" once a fallback answered
    # The conversation key that keeps a conversation on one remote replica: the
    # X-Session-Id header, else a hash of the API key (never the key itself).
    affinity: str | None = None
    traceparent: str | None = None  # what a remote engine's request carries (W3C)

    @classmethod
    def from_headers(cls, headers: list[tuple[bytes, bytes]]) -> RequestContext:
        ctx = cls()
        for key, value in headers:
            if key == b"cache-control":
                directives = {
                    d.strip().split("=")[0] for d in value.decode("latin-1").lower().split(",")
                }
                if "no-store" in directives:
                    ctx.cache_read = ctx.cache_store = False
                elif "no-cache" in directives:
                    ctx.cache_read = False
            elif key == b"x-session-id" and value:
                ctx.affinity = "session:" + value.decode("latin-1")[:256]
            elif key in (b"authorization", b"x-api-key") and ctx.affinity is None and value:
                digest = hashlib.blake2b(value, digest_size=12).hexdigest()
                ctx.affinity = "key:" + digest
            elif key == b"traceparent":
                ctx.traceparent = value.decode("latin-1")[:128]
            elif key == FALLBACK_HEADER.encode():
                if value.strip().lower() in (b"off", b"false", b"0", b"no"):
                    ctx.fallback = False
        return ctx

    def cache_outcome(self) -> str | None:
        """``hit`` when every generation of the request came from the cache, ``miss``
        when one was computed, ``bypass`` when the cache was not used; None when the
        request had no generation the cache could take."""
        if self.cache_misses:
            return "miss"
        if self.cache_hits:
            return "hit"
        if self.cache_bypassed:
            return "bypass"
        return None

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        out = []
        outcome = self.cache_outcome()
        if outcome is not None:
            out.append((CACHE_HEADER.encode(), outcome.encode()))
        if self.fallback_path is not None:
            out.append((FALLBACK_HEADER.encode(), self.fallback_path.encode("latin-1")))
        return out


current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "mullama_request_context", default=None
)


def get() -> RequestContext:
    """The current request's context; a fresh default one outside a request."""
    ctx = current.get()
    return ctx if ctx is not None else RequestContext()
