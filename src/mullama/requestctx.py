"""The one state of an HTTP request: what it asks of the layers below the API, and what
they report back.

``RequestStateMiddleware`` (daemon/middleware.py, the outermost) makes one
:class:`RequestContext` per request from its scope and headers and puts it in the
``current`` context variable for the request's task (and the tasks started from it);
everything below reads and fills that one object. The access log opens and closes it
(observability/access.py: metrics, per-model summary, access line, span); the engine
observer (observability/hub.py) adds each generation's model, tokens and timings, which
the token rate limiter (security/ratelimit.py) charges; the in-flight middleware gives it
its ``Progress`` (the stream idle timeout). ``CallerContextMiddleware`` (inside the auth
middleware, which stored the caller) sets the caller's cache tenant (security/tenancy.py),
which scopes every generation's prefix reuse and response-cache entry (``cache_scope``),
and whether the daemon runs with --strict-fields, and adds the headers collected here to
the response when it starts. The model manager reads the cache policy and records cache
hits; the fallback router (api/fallback.py) records which model answered; the request
models (api/fields.py) record the fields they accepted without acting on them
(``Mullama-Ignored-Fields``); a remote engine reads the conversation key and the trace
context (models/remote.py).
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
CLAMPED_HEADER = "mullama-max-tokens-clamped"
TRUNCATED_HEADER = "mullama-inputs-truncated"
# Request headers that ask for API features by name: accepted, and reported as ignored.
BETA_HEADERS = (b"anthropic-beta", b"openai-beta")

# Health probes (also answered past the connection limit: daemon/http_protocol.py).
# These path sets sort requests for logs and stats only; who may call a route is what the
# route declares (security/policy.py).
HEALTH_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/v1/health"})
# Probes and scrapes: counted in mullama_requests_total under their own endpoint, but not
# as API requests (active/total/failed stats) and logged at DEBUG, not INFO.
MONITORING_PATHS = HEALTH_PATHS | frozenset(
    {
        "/metrics",
        "/completion-metrics",
        "/v1/completion-metrics",
        "/api/system/status",
    }
)

MAX_IGNORED = 64  # names kept per request (a body can hold any number of unknown keys)
_SHOWN = re.compile(r"[A-Za-z0-9_.\-\[\]=]{1,80}")


def shown_name(name: str) -> str:
    """A field name as a header value and a metric label can carry it: ASCII, at most
    80 characters (others percent-encoded, the rest cut)."""
    if _SHOWN.fullmatch(name):
        return name
    return quote(name, safe="[]._-=")[:80] or '""'


@dataclass(eq=False)
class Progress:
    """When a request last made progress (time.monotonic()). The in-flight middleware
    (daemon/inflight.py) makes one per request and ends a stream that made none for
    --stream-idle-timeout; it marks each body chunk sent, and the engines mark each of
    their steps while the request's generation is open."""

    at: float = field(default_factory=time.monotonic)

    def mark(self) -> None:
        self.at = time.monotonic()


def _is_monitoring(path: str) -> bool:
    """Probes, scrapes and the UI's files."""
    return path in MONITORING_PATHS or path == "/ui" or path.startswith("/ui/")


def _client(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    if not client:
        return ""
    host, port = client[0], client[1]
    return f"{host}:{port}" if port else str(host)


@dataclass(eq=False)
class RequestContext:
    # The request itself (RequestStateMiddleware).
    request_id: str = ""
    method: str = ""
    path: str = ""
    client: str = ""
    monitoring: bool = False  # health probes, /metrics: not counted as API requests
    started: float = field(default_factory=time.perf_counter)
    started_ns: int = field(default_factory=time.time_ns)  # wall clock, for spans
    span: Any = field(default=None, repr=False)  # its tracing span, when tracing is on
    progress: Progress | None = None  # the in-flight middleware's (stream idle timeout)
    # What its generations did (the engine observer, observability/hub.py).
    model: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, found in the KV cache (not computed)
    completion_tokens: int = 0
    first_token: float | None = None  # perf_counter of the first generated token
    finish_reasons: list[str] = field(default_factory=list)
    error: bool = False  # a generation failed after the response had started
    # What it asks of the caches and the fallbacks, and what they did.
    cache_read: bool = True  # Cache-Control: no-cache / no-store turn these off
    cache_store: bool = True  # no-store
    fallback: bool = True  # X-Mullama-Fallback: off (or "fallback": false in the body)
    cache_hits: int = 0
    cache_misses: int = 0
    cache_bypassed: int = 0
    fallback_path: str | None = None  # "PRIMARY->BACKUP" once a fallback answered
    # "ASKED->GIVEN; by=context" for each answer given fewer tokens than max_tokens asked
    max_tokens_clamped: list[str] = field(default_factory=list)
    # The embedding inputs cut to fit the model (by their index), when the client allowed it
    inputs_truncated: list[int] = field(default_factory=list)
    # What a remote engine's request needs, read from the headers as they are and made
    # into its forms only when a remote model asks (``affinity``, ``traceparent``).
    session_id: bytes | None = None
    api_key: bytes | None = field(default=None, repr=False)
    client_traceparent: bytes | None = None
    cache_tenant: str = ""  # whose caches it uses ("" = shared; security/tenancy.py)
    strict_fields: bool = False  # --strict-fields: unknown fields and hints are refused
    # Fields accepted and not acted on, in the order met: name -> whether the API declares
    # it (a bounded metric label) rather than the client making it up.
    ignored: dict[str, bool] = field(default_factory=dict)
    ignored_more: int = 0  # names past MAX_IGNORED, counted only

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

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
    def from_scope(cls, scope: dict[str, Any], request_id: str) -> RequestContext:
        """The context of an HTTP request: what it is, and what its headers ask."""
        ctx = cls.from_headers(scope["headers"])
        ctx.request_id, ctx.method, ctx.path = request_id, scope["method"], scope["path"]
        ctx.client, ctx.monitoring = _client(scope), _is_monitoring(scope["path"])
        return ctx

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
        if self.inputs_truncated:
            cut = ",".join(map(str, self.inputs_truncated))
            out.append((TRUNCATED_HEADER.encode(), cut.encode()))
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


def progress_marker() -> Callable[[], None] | None:
    """What a generation calls to mark the current request's progress (None outside one)."""
    ctx = current.get()
    return ctx.progress.mark if ctx is not None and ctx.progress is not None else None
