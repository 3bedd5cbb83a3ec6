"""Cross-site request defence: a web page on another origin must not be able to use the
daemon through the user's browser (stop it, copy or delete models, spend its CPU).

Browsers send ``Origin`` with every cross-origin request, including the "simple" ones
they send without a CORS preflight (a ``POST`` with ``Content-Type: text/plain``). So:

- a request with an ``Origin`` that is neither the daemon's own (the request's ``Host``,
  or ``X-Forwarded-Host`` behind a proxy) nor listed in ``--cors-origins`` gets 403 in
  the API's error shape, on every route, before anything runs;
- a request body on a JSON route must say ``Content-Type: application/json`` (415
  otherwise), so a form or a text/plain body never reaches a route. One exception keeps
  ``curl -d '{...}'`` working as with Ollama: a form-encoded body from a client that sent
  no ``Origin`` (browsers always do on a POST) is read as the JSON it is.

Clients that are not browsers (SDKs, curl, the CLI) send no ``Origin`` and see no change.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import Forbidden, MullamaError
from ..wire.errors import error_response
from .hosts import host_of

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class UnsupportedMediaType(MullamaError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


def _origin_host(origin: str) -> str | None:
    """``host[:port]`` of an origin (``scheme://host[:port]``), lower case; None when the
    value is not an http(s) origin (``null``, a file, garbage)."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        return None
    port = parts.port
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return host if port in (None, default) else f"{host}:{port}"


def _same_host(a: str, b: str) -> bool:
    """Two ``host[:port]`` values naming the same place (a default port may be absent)."""

    def norm(v: str) -> str:
        v = v.strip().lower().rstrip(".")
        return v[:-3] if v.endswith(":80") else v[:-4] if v.endswith(":443") else v

    return norm(a) == norm(b)


class OriginGuardMiddleware:
    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.allowed = {o.strip().lower().rstrip("/") for o in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        err: MullamaError | None = None
        if origin is not None and not self._allowed(origin, headers):
            err = Forbidden(
                f"cross-origin request from {origin[:100]!r} refused: only this daemon's own "
                "pages and the origins given with --cors-origins may call it from a browser"
            )
        elif scope["method"] in BODY_METHODS and not _json_body(headers, origin is None):
            err = UnsupportedMediaType(
                f"the request body must be JSON, sent with 'Content-Type: application/json' "
                f"(got {headers.get('content-type', '')[:80]!r})"
            )
        if err is not None:
            await error_response(scope["path"], err)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, headers: dict[str, str]) -> bool:
        if self.any or origin.strip().lower().rstrip("/") in self.allowed:
            return True
        host = _origin_host(origin)
        if host is None:
            return False
        own = [h for h in (headers.get("host"), headers.get("x-forwarded-host")) if h]
        return any(host_of(h) is not None and _same_host(host, h) for h in own)


def _json_body(headers: dict[str, str], no_origin: bool) -> bool:
    """Whether the request's body, if it has one, is declared JSON."""
    length = headers.get("content-length")
    if length == "0" or (length is None and "transfer-encoding" not in headers):
        return True  # no body
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return True
    # curl -d sends form encoding; a browser would have sent Origin with it.
    return kind in ("", "application/x-www-form-urlencoded") and no_origin
