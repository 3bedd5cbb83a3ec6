"""The app's exception handlers: every error a route raises, FastAPI's validation errors
and Starlette's HTTP errors answered in the shape of the path's API (wire/errors.py)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ClientError, InvalidParameter, MullamaError, NotFound, ServerError
from ..wire.errors import error_response
from ..wire.framing import ORJSONResponse

log = logging.getLogger(__name__)


def allowed_methods(request: Request) -> str:
    """Every method of the path (Starlette names only those of the first route that
    matched it: ``GET`` for a path that also takes ``DELETE``)."""
    path = request.scope["path"]
    routes = getattr(request.app.state, "api_routes", ())
    methods = {m for r in routes if r.path_regex.match(path) for m in r.methods or ()}
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    async def on_mullama(request: Request, exc: Exception) -> ORJSONResponse:
        assert isinstance(exc, MullamaError)
        if exc.status >= 500:
            log.error("request failed: %s", exc.message)
        return error_response(request.scope["path"], exc)

    async def on_validation(request: Request, exc: Exception) -> ORJSONResponse:
        assert isinstance(exc, RequestValidationError)
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in err["loc"][1:]) or None
        return error_response(request.scope["path"], InvalidParameter(str(err["msg"]), param=param))

    async def on_http(request: Request, exc: Exception) -> ORJSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            err: MullamaError = NotFound(f"no route {request.method} {request.scope['path']}")
        else:
            err = ClientError(str(exc.detail), status=exc.status_code, code="http_error")
        resp = error_response(request.scope["path"], err)
        if exc.headers:
            resp.headers.update(exc.headers)
        if exc.status_code == 405:
            resp.headers["Allow"] = allowed_methods(request) or resp.headers.get("Allow", "")
        return resp

    async def on_unexpected(request: Request, exc: Exception) -> ORJSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.scope["path"])
        return error_response(
            request.scope["path"], ServerError("internal error; see the daemon log")
        )

    app.add_exception_handler(MullamaError, on_mullama)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
