"""The one place where errors get their wire forms: a JSON response in the OpenAI, the
Anthropic or the Ollama shape, the error event ending an SSE stream, the error line ending
an NDJSON one. On the ground floor: the guards, the in-flight tails and the API layer all
answer with these."""

from __future__ import annotations

from typing import Any

from ..errors import MullamaError
from .framing import SSE_DONE, ORJSONResponse, ndjson_line, sse


def openai_body(exc: MullamaError) -> dict[str, Any]:
    return {
        "error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
    }


def ollama_body(exc: MullamaError) -> dict[str, Any]:
    return {"error": exc.message}


_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    503: "overloaded_error",
}  # fmt: skip


def anthropic_body(exc: MullamaError) -> dict[str, Any]:
    """Anthropic's error shape (the Messages API's routes)."""
    kind = _ANTHROPIC_TYPES.get(exc.status)
    if kind is None:
        kind = "api_error" if exc.status >= 500 else "invalid_request_error"
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def error_api(path: str) -> str:
    """Whose error shape a path answers in: Ollama's under /api/, Anthropic's under
    /v1/messages, OpenAI's elsewhere (the names of ``ERROR_SCHEMAS``)."""
    if path.startswith("/api/"):
        return "OllamaError"
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "AnthropicError"
    return "OpenAIError"


_BODIES = {"OllamaError": ollama_body, "AnthropicError": anthropic_body, "OpenAIError": openai_body}


def error_body(path: str, exc: MullamaError) -> dict[str, Any]:
    return _BODIES[error_api(path)](exc)


_NULLABLE_STR = {"anyOf": [{"type": "string"}, {"type": "null"}]}

# The three shapes as JSON schemas, for the OpenAPI document (api/openapi.py).
ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": _NULLABLE_STR,
                    "code": _NULLABLE_STR,
                },
            }
        },
    },
    "OllamaError": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
        "additionalProperties": False,
    },
    "AnthropicError": {
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": {"enum": sorted({*_ANTHROPIC_TYPES.values(), "api_error"})},
                    "message": {"type": "string"},
                },
            },
        },
    },
}


def sse_error(exc: MullamaError) -> bytes:
    """The error event that ends an OpenAI stream (before ``data: [DONE]``)."""
    return sse(openai_body(exc))


def stream_error_tail(path: str, exc: MullamaError) -> bytes:
    """What ends an SSE stream cut by an error (a drain, a timeout), in the stream's API:
    Anthropic's ``error`` event, the Responses API's, or OpenAI's error and ``[DONE]``."""
    if path == "/v1/messages":
        return sse(anthropic_body(exc), "error")
    if path == "/v1/responses":
        return sse({"type": "error", "code": exc.code or exc.type,
                    "message": exc.message, "param": exc.param}, "error")  # fmt: skip
    return sse_error(exc) + SSE_DONE


def ndjson_error(exc: MullamaError) -> bytes:
    """The error line that ends an Ollama stream."""
    return ndjson_line(ollama_body(exc))


def error_response(path: str, exc: MullamaError) -> ORJSONResponse:
    """The error in the shape of the API that ``path`` belongs to."""
    body = error_body(path, exc)
    return ORJSONResponse(body, status_code=exc.status, headers=exc.headers or None)
