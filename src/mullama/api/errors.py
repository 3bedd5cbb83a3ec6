"""The one place where errors become HTTP responses (OpenAI shape)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ClientError, InvalidParameter, MullamaError, NotFound, ServerError
from .responses import ORJSONResponse

log = logging.getLogger(__name__)


def ollama_error(exc: MullamaError) -> ORJSONResponse:
    return ORJSONResponse(
        {"error": exc.message}, status_code=exc.status, headers=exc.headers or None
    )


def error_response(path: str, exc: MullamaError) -> ORJSONResponse:
    """Ollama's shape under /api/, OpenAI's everywhere else."""
    if path.startswith("/api/"):
        return ollama_error(exc)
    return openai_error(exc)


def openai_error(exc: MullamaError) -> ORJSONResponse:
    body = {
        "error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
    }
    return ORJSONResponse(body, status_code=exc.status, headers=exc.headers or None)


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
