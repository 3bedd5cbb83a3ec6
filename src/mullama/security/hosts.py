"""DNS-rebinding defence: the Host header a request addresses the daemon by.

A page on an attacker's site can make its own DNS name resolve to 127.0.0.1 (DNS
rebinding): the browser then sends it, with ``Host`` and ``Origin`` both the attacker's
name, from a local address. So on a loopback bind, the Host header must name a loopback
host (or an --allowed-hosts name); on an exposed bind without keys, a caller on this
machine gets local admin only when its Host is a loopback name, an IP literal or an
--allowed-hosts name (Ollama's fix for CVE-2024-28224 is the same rule).
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import Forbidden
from ..wire.errors import error_response
from .policy import is_loopback_ip, via_local_socket

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback_bind(addr: str) -> bool:
    return addr.lower() in LOOPBACK_NAMES or is_loopback_ip(addr)


def host_of(header: str) -> str | None:
    """The host part of a Host header (``name``, ``name:port``, ``[v6]:port``), or None when
    the value is not a plain host[:port]."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, _, port = value.partition(":")
        rest = ":" + port if port else ""
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return None
    if not host or any(c in host for c in "/?#@\\ %"):
        return None
    return host.rstrip(".")


def is_loopback_host(header: str, allowed: frozenset[str] = frozenset()) -> bool:
    host = host_of(header)
    if host is None:
        return False
    return (
        host in LOOPBACK_NAMES
        or host.endswith(".localhost")
        or is_loopback_ip(host)
        or host in allowed
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def addressed_by_name(scope: Scope, allowed: frozenset[str] = frozenset()) -> bool:
    """True when the request's Host is a DNS name other than a loopback one and the
    --allowed-hosts names (or is not a valid host at all); False for an IP literal, a
    loopback name, an allowed name, or no Host header (not a browser)."""
    for name, value in scope["headers"]:
        if name == b"host":
            host = host_of(value.decode("latin-1"))
            if host is None:
                return True
            return not (is_loopback_host(host, allowed) or _is_ip(host))
    return False


class HostGuardMiddleware:
    """403 for a request whose Host header is not loopback when the daemon listens on
    loopback only: a web page on another site cannot reach it by DNS rebinding."""

    def __init__(self, app: ASGIApp, allowed_hosts: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.allowed = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not via_local_socket(scope):
            for name, value in scope["headers"]:
                if name == b"host":
                    if not is_loopback_host(value.decode("latin-1"), self.allowed):
                        err = Forbidden(
                            "Host header is not a loopback address; this daemon only "
                            "answers requests addressed to localhost"
                        )
                        await error_response(scope["path"], err)(scope, receive, send)
                        return
        await self.app(scope, receive, send)
