"""What one HTTP request asks of the layers below the API, and what they report back.

``RequestContextMiddleware`` (daemon/middleware.py) reads the request's headers into a
:class:`RequestContext`, puts it in the ``current`` context variable for the request's
task (and the tasks started from it), and adds the headers it collected to the response
when the response starts. The model manager reads the cache policy and records cache
hits; the fallback router (api/fallback.py) records which model answered; the request
models (api/fields.py) record the fields they accepted without acting on them
(``Mullama-Ignored-Fields``). The middleware also sets the caller's cache tenant
(security/tenancy.py), which scopes every generation's prefix reuse and response-cache
entry (``cache_scope``), and whether the daemon runs with --strict-fields.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

FALLBACK_HEADER = "x-mullama-fallback"
CACHE_HEADER = "x-mullama-cache"
IGNORED_HEADER = "mullama-ignored-fields"
# Request headers that ask for API features by name: accepted, and reported as ignored.
BETA_HEADERS = (b"anthropic-beta", b"openai-beta")

MAX_IGNORED = 64  # names kept per request (a body can hold any number of unknown keys)
_SHOWN = re.compile(r"[A-Za-z0-9_.\-\[\]=]{1,80}")


def shown_name(name: str) -> str:
    """A field name as a header value and a metric label can carry it: ASCII, at most
    80 characters (others percent-encoded, the rest cut)."""
    if _SHOWN.fullmatch(name):
        return name
    return quote(name, safe="[]._-=")[:80] or '""'


@dataclass(eq=False)
class RequestContext:
    cache_read: bool = True  # Cache-Control: no-cache / no-store turn these off
    cache_store: bool = True  # no-store
    fallback: bool = True  # X-Mullama-Fallback: off (or "fallback": false in the body)
    cache_hits: int = 0
    cache_misses: int = 0
    cache_bypassed: int = 0
    fallback_path: str | None = None  # "PRIMARY->BACKUP" once a fallback answered
    # "ASKED->GIVEN; by=context" for each answer given fewer tokens than max_tokens asked
    max_tokens_clamped: list[str] = field(default_factory=list)
    # What a remote engine's request needs, read from the headers as they are and made
    # into its forms only when a remote model asks (``affinity``, ``traceparent``).
    session_id: bytes | None = None
    api_key: bytes | None = field(default=None, repr=False)
    client_traceparent: bytes | None = None
    span: Any = field(default=None, repr=False)  # the request's tracing span (middleware)
    cache_tenant: str = ""  # whose caches it uses ("" = shared; security/tenancy.py)
    strict_fields: bool = False  # --strict-fields: unknown fields and hints are refused
    # Fields accepted and not acted on, in the order met: name -> whether the API declares
    # it (a bounded metric label) rather than the client making it up.
    ignored: dict[str, bool] = field(default_factory=dict)
    ignored_more: int = 0  # names past MAX_IGNORED, counted only

    def ignore(self, name: str, declared: bool = True) -> None:
        name = shown_name(name)
        if name in self.ignored:
            return
        if len(self.ignored) >= MAX_IGNORED:
            self.ignored_more += 1
            return
        self.ignored[name] = declared

    def cache_scope(self, salt: str | None = None) -> str:
        """The namespace of a generation's KV reuse and response-cache entry: "" when
        the caches are shared and no cache_salt is given, else a short hash of the
        tenant and the salt (the same for every daemon, so Redis entries match)."""
        if not self.cache_tenant and not salt:
            return ""
        h = hashlib.blake2b(digest_size=12, person=b"mullama-scope")
        h.update(self.cache_tenant.encode())
        h.update(b"\0")
        h.update((salt or "").encode())
        return h.hexdigest()

    @property
    def affinity(self) -> str | None:
        """The conversation key that keeps a conversation on one remote replica: the
        X-Session-Id header, else a hash of the API key (never the key itself)."""
        if self.session_id:
            return "session:" + self.session_id.decode("latin-1")[:256]
        if self.api_key:
            return "key:" + hashlib.blake2b(self.api_key, digest_size=12).hexdigest()
        return None

    @property
    def traceparent(self) -> str | None:
        """The W3C trace context for a remote engine: the request's own span when tracing
        is on, else the client's header."""
        if self.span is not None:
            sc = self.span.get_span_context()
            return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"
        return self.client_traceparent.decode("latin-1")[:128] if self.client_traceparent else None

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
            elif key == b"x-session-id":
                ctx.session_id = value
            elif key in (b"authorization", b"x-api-key") and not ctx.api_key:
                ctx.api_key = value
            elif key == b"traceparent":
                ctx.client_traceparent = value
            elif key == FALLBACK_HEADER.encode():
                if value.strip().lower() in (b"off", b"false", b"0", b"no"):
                    ctx.fallback = False
            elif key in BETA_HEADERS and value.strip():
                ctx.ignore(key.decode())  # the features it names are not implemented
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
        if self.max_tokens_clamped:
            clamped = ", ".join(dict.fromkeys(self.max_tokens_clamped))  # each once, in order
            out.append((CLAMPED_HEADER.encode(), clamped.encode()))
        outcome = self.cache_outcome()
        if outcome is not None:
            out.append((CACHE_HEADER.encode(), outcome.encode()))
        if self.fallback_path is not None:
            out.append((FALLBACK_HEADER.encode(), self.fallback_path.encode("latin-1")))
        if self.ignored:
            names = ",".join(self.ignored)
            if self.ignored_more:
                names += f",+{self.ignored_more} more"
            out.append((IGNORED_HEADER.encode(), names.encode("ascii")))
        return out


current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "mullama_request_context", default=None
)


def get() -> RequestContext:
    """The current request's context; a fresh default one outside a request."""
    ctx = current.get()
    return ctx if ctx is not None else RequestContext()


# ---- progress: the stream idle timeout --------------------------------------------------

CLAMPED_HEADER = "mullama-max-tokens-clamped"


@dataclass(eq=False)
class Progress:
    """When a request last made progress (time.monotonic()). The in-flight middleware
    (daemon/inflight.py) makes one per request and ends a stream that made none for
    --stream-idle-timeout; it marks each body chunk sent, and the engines mark each of
    their steps while the request's generation is open."""

    at: float = field(default_factory=time.monotonic)

    def mark(self) -> None:
        self.at = time.monotonic()


progress: contextvars.ContextVar[Progress | None] = contextvars.ContextVar(
    "mullama_request_progress", default=None
)


def progress_marker() -> Callable[[], None] | None:
    """What a generation calls to mark the current request's progress (None outside one)."""
    current_progress = progress.get()
    return current_progress.mark if current_progress is not None else None
