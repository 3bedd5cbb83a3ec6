"""The request-guarding middleware stack, in one place.

Outermost first: route rule (400 for a control character in the path; the rule of the
route that will run, read by the guards below) → [CORS] → Origin guard (cross-site requests, non-JSON bodies) → [Host
guard, loopback binds] → in-flight (503 while draining,
request timeout, abort on shutdown) → body limit → auth → rate limit → app. The caller adds
request-id (and access logging) outside of these.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from ..config import Settings
from ..security.auth import AuthMiddleware
from ..security.hosts import HostGuardMiddleware, is_loopback_bind
from ..security.keys import KeyRing
from ..security.origin import OriginGuardMiddleware
from ..security.ratelimit import RateLimiter, RateLimitMiddleware
from ..security.routing import RouteRuleMiddleware
from .inflight import InflightMiddleware, InflightTracker, Timeouts
from .middleware import BodyLimitMiddleware


def install_guards(app: FastAPI, settings: Settings) -> None:
    """Raises ConfigError for a bad key file or rate-limit storage."""
    keys = KeyRing.from_settings(settings)
    limiter = RateLimiter(
        settings.rate_limit_storage, settings.rate_limit_requests, settings.rate_limit_tokens
    )
    tracker = InflightTracker()
    app.state.keys = keys
    app.state.inflight = tracker
    app.state.shutdown = None  # set by daemon.server when running under uvicorn
    loopback = is_loopback_bind(settings.http_addr)
    allowed_hosts = frozenset(h.strip().lower().rstrip(".") for h in settings.allowed_hosts)
    # add_middleware puts each one outside the ones added before it.
    app.add_middleware(RateLimitMiddleware, limiter=limiter, fail=settings.rate_limit_fail)
    app.add_middleware(
        AuthMiddleware,
        keys=keys,
        metrics_public=settings.metrics_public,
        exposed=not loopback,
        allow_remote_admin=settings.allow_remote_admin,
        allowed_hosts=allowed_hosts,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_size)
    app.add_middleware(
        InflightMiddleware,
        lifecycle=app.state.lifecycle,
        tracker=tracker,
        timeouts=Timeouts(
            settings.request_timeout, settings.stream_idle_timeout, settings.stream_timeout
        ),
    )
    if loopback:
        app.add_middleware(HostGuardMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(OriginGuardMiddleware, allowed=settings.cors_origins)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "retry-after", "x-ratelimit-remaining-requests"],
        )
    app.add_middleware(RouteRuleMiddleware, router=app.router)
