"""Mullama's error tree. Who is at fault decides the class; ``api/`` maps classes to HTTP
in exactly one place per wire format."""

from __future__ import annotations


class MullamaError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    unserved: bool = False  # raised before the model took the request (--fallback may answer)

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def to_wire(self) -> dict[str, object]:
        """The fields that cross the worker→daemon boundary."""
        return {
            "kind": type(self).__name__,
            "message": self.message,
            "param": self.param,
            "code": self.code,
            "status": self.status,
        }

    @staticmethod
    def from_wire(data: dict[str, object]) -> MullamaError:
        status = data.get("status")
        # A subclass declared outside this module (the engine's GrammarError) arrives as
        # its nearest kind here: a client error when its status says so.
        fallback = ClientError if isinstance(status, int) and status < 500 else ServerError
        cls = _BY_NAME.get(str(data.get("kind")), fallback)
        return cls(
            str(data.get("message", "error")),
            param=data.get("param"),  # type: ignore[arg-type]
            code=data.get("code"),  # type: ignore[arg-type]
            status=status,  # type: ignore[arg-type]
        )


class ClientError(MullamaError):
    """The request is wrong; retrying it unchanged will fail again (4xx)."""

    status = 400
    type = "invalid_request_error"


class InvalidParameter(ClientError):
    code = "invalid_parameter"


class ContextLengthExceeded(ClientError):
    code = "context_length_exceeded"


class ModelNotFound(ClientError):
    status = 404
    code = "model_not_found"


class ModelNotLoaded(ClientError):
    """A read-only request about a model that is known but not loaded (a GET never
    loads one)."""

    status = 409
    code = "model_not_loaded"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class InvalidName(ClientError):
    """A model name or Hub filename that could escape the store or is malformed."""

    code = "invalid_model_name"


class ClientDisconnected(ClientError):
    """The client went away before its answer was ready (nginx's 499): its generation
    was cancelled. Nobody reads the response; it is counted, not logged as an error."""

    status = 499
    code = "client_closed_request"


class AlreadyExists(ClientError):
    status = 409
    code = "already_exists"


class PayloadTooLarge(ClientError):
    status = 413
    code = "request_too_large"


class Unauthorized(ClientError):
    """No API key, or one that is not known (401)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class Forbidden(ClientError):
    """Authenticated (or not required), but not allowed here (403)."""

    status = 403
    type = "permission_error"
    code = "forbidden"


class RateLimited(ClientError):
    """Over a rate limit (429, with Retry-After)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServerError(MullamaError):
    """Mullama or the engine failed (5xx)."""

    status = 500
    type = "server_error"


class EngineCrashed(ServerError):
    status = 502
    code = "engine_crashed"


class ModelUnloaded(EngineCrashed):
    """The model was unloaded (by an operator, eviction or expiry) under a request: no
    fault of the model's, so its circuit breaker does not count it."""

    code = "model_unloaded"


class UpstreamFailed(ServerError):
    """A remote engine (--remote) failed the request, or could not be reached (502)."""

    status = 502
    code = "upstream_error"


class DownloadFailed(ServerError):
    """A pull failed: the Hub refused, the connection broke, or the bytes did not verify."""

    status = 502
    code = "download_failed"


class NoSpace(ServerError):
    status = 507
    code = "no_space"


class InsufficientMemory(ServerError):
    """A model cannot fit the memory budget even with every other model unloaded (507)."""

    status = 507
    code = "insufficient_memory"


class Unavailable(ServerError):
    """Temporarily unable to serve (503, with Retry-After)."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.headers.setdefault("Retry-After", str(retry_after))


class RequestTimeout(ServerError):
    """The request ran longer than --request-timeout; its generation was cancelled."""

    status = 504
    type = "timeout_error"
    code = "request_timeout"


_BY_NAME: dict[str, type[MullamaError]] = {
    c.__name__: c
    for c in (
        MullamaError,
        ClientError,
        InvalidParameter,
        ContextLengthExceeded,
        ModelNotFound,
        NotFound,
        InvalidName,
        AlreadyExists,
        PayloadTooLarge,
        Unauthorized,
        Forbidden,
        RateLimited,
        ServerError,
        EngineCrashed,
        UpstreamFailed,
        DownloadFailed,
        NoSpace,
        Unavailable,
        RequestTimeout,
    )
}
