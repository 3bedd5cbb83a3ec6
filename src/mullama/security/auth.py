"""API-key authentication and admin-route authorisation (plain ASGI middleware)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import Forbidden, MullamaError, Unauthorized
from ..wire.errors import error_response
from .hosts import addressed_by_name
from .keys import KeyRing
from .policy import Access, is_local_caller, is_public, request_rule, via_local_socket

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name, or the client address when no key is needed."""

    name: str
    admin: bool
    rate_key: str | None  # identity for rate limits; None = not limited
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


LOCAL_SOCKET = Principal("local-socket", admin=True, rate_key=None)


def presented_key(scope: Scope) -> str | None:
    """``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. Two different keys in one
    request (repeated headers, or both headers) are refused: which one would count is
    exactly what a confused proxy or an attacker would play with."""
    found: set[str] = set()
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                found.add(token.strip())
        elif name == b"x-api-key" and value.strip():
            found.add(value.decode("latin-1").strip())
    if len(found) > 1:
        raise Unauthorized("more than one API key in the request; send exactly one")
    return next(iter(found), None)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class AuthMiddleware:
    """Deny by default: with keys configured, every route but the public ones needs a
    valid key, and admin routes need an admin-scoped key. Without keys, admin routes are
    refused to callers that are not on this machine when the daemon is exposed
    (non-loopback bind) unless --allow-remote-admin; a caller on this machine counts only
    when it addresses the daemon by a loopback name, an IP address or an --allowed-hosts
    name (a page that rebinds its own DNS name to 127.0.0.1 does not). The route's rule
    comes from RouteRuleMiddleware (the route that will run, not the path's spelling).
    Stores the caller in ``scope["state"]["principal"]``."""

    def __init__(
        self,
        app: ASGIApp,
        keys: KeyRing,
        *,
        metrics_public: bool = False,
        exposed: bool = False,
        allow_remote_admin: bool = False,
        allowed_hosts: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.keys = keys
        self.metrics_public = metrics_public
        self.exposed = exposed
        self.allow_remote_admin = allow_remote_admin
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            principal = self._authorize(scope)
        except MullamaError as exc:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await error_response(scope["path"], exc)(scope, receive, send)
            return
        if principal is not None:
            scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _local_admin(self, scope: Scope) -> bool:
        """Without keys: may this caller manage models?"""
        if not self.exposed or self.allow_remote_admin:
            return True
        return is_local_caller(scope) and not addressed_by_name(scope, self.allowed_hosts)

    def _authorize(self, scope: Scope) -> Principal | None:
        if via_local_socket(scope):
            return LOCAL_SOCKET
        rule = request_rule(scope)
        if is_public(rule, self.metrics_public):
            return None
        admin_route = rule.access is Access.ADMIN
        if not self.keys:
            may_admin = self._local_admin(scope)
            if admin_route and not may_admin:
                raise Forbidden(
                    "model management is only allowed from this machine, addressed as "
                    "localhost or by IP address, when no API keys are configured (set API "
                    "keys, --allowed-hosts or --allow-remote-admin)"
                )
            addr = client_address(scope)
            return Principal(f"client {addr}", admin=may_admin, rate_key=f"addr:{addr}")
        token = presented_key(scope)
        if token is None:
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
            )
        key = self.keys.lookup(token)
        if key is None:
            raise Unauthorized("invalid API key")
        if admin_route and key.scope != "admin":
            raise Forbidden(f"API key {key.name!r} has scope inference; this route needs admin")
        return Principal(
            key.name,
            admin=key.scope == "admin",
            rate_key=f"key:{key.name}",
            requests_per_minute=key.requests_per_minute,
            tokens_per_minute=key.tokens_per_minute,
        )
