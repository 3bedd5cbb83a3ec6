"""The web UI: static pages served from the package (``mullama/ui``), read with
importlib.resources, never from the network. The pages talk to the daemon's own API
(same origin), so everything they do is what a client may do with the key it holds.

Every page and asset carries a strict Content-Security-Policy (scripts and styles only
from this origin, no inline script, no framing), ``X-Frame-Options: DENY`` and
``nosniff``. The pages are public (they hold nothing); the API calls they make are not.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from .. import __version__
from ..access import public
from ..errors import NotFound
from ..wire.framing import ORJSONResponse

router = APIRouter(include_in_schema=False)

UI_PREFIX = "/ui/"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
PAGES = {"": "index.html", "dashboard": "dashboard.html"}


@cache
def asset(name: str) -> bytes | None:
    """One file of the UI, or None: only plain names of the package's own files with a
    known type (no paths, so nothing outside the package can be named)."""
    if "/" in name or "\\" in name or name.startswith(".") or _suffix(name) not in TYPES:
        return None
    node = resources.files("mullama.ui").joinpath(name)
    return node.read_bytes() if node.is_file() else None


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def wants_html(request: Request) -> bool:
    """A browser navigating (``Accept: text/html``), not an API client."""
    return "text/html" in request.headers.get("accept", "")


@router.get("/ui")
@public
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=308, headers=HEADERS)


@router.get("/ui/config.json")
@public
async def ui_config(request: Request) -> ORJSONResponse:
    """What the pages need before their first API call: whether a key is required (so
    they ask for it first) and the version."""
    return ORJSONResponse(
        {"auth_required": bool(request.app.state.keys), "version": __version__},
        headers=HEADERS,
    )


@router.api_route("/ui/", methods=["GET", "HEAD"])
@router.api_route("/ui/{name}", methods=["GET", "HEAD"])
@public
async def ui_file(name: str = "") -> Response:
    name = PAGES.get(name, name)
    body = asset(name)
    if body is None:
        raise NotFound(f"no page or file {UI_PREFIX}{name}")
    return Response(body, media_type=TYPES[_suffix(name)], headers=HEADERS)
