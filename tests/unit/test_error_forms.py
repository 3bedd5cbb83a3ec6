"""Every error class in every wire form, from the one builder in wire/errors.py."""

from __future__ import annotations

import orjson
import pytest

from mullama import errors
from mullama.daemon.http_protocol import _response
from mullama.wire.errors import (
    error_body,
    error_response,
    ndjson_error,
    openai_body,
    sse_error,
    stream_error_tail,
)


def _all(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all(sub))
    return out


KINDS = sorted({c for c in _all(errors.MullamaError) if c.__module__.startswith("mullama")},
               key=lambda c: c.__name__)  # fmt: skip


ANTHROPIC_TYPES = {"invalid_request_error", "authentication_error", "permission_error",
                   "not_found_error", "request_too_large", "rate_limit_error", "api_error",
                   "overloaded_error"}  # fmt: skip


@pytest.mark.parametrize("kind", KINDS, ids=lambda c: c.__name__)
def test_each_error_kind_in_both_apis_shapes(kind):
    exc = kind("it went wrong", param="x") if kind is not errors.MullamaError else kind("it")
    openai = error_body("/v1/chat/completions", exc)
    assert set(openai) == {"error"}
    assert set(openai["error"]) == {"message", "type", "param", "code"}
    assert openai["error"]["message"] == exc.message and openai["error"]["type"] == exc.type
    assert error_body("/api/chat", exc) == {"error": exc.message}
    for path in ("/v1/models", "/api/tags"):
        resp = error_response(path, exc)
        assert resp.status_code == exc.status
        assert orjson.loads(resp.body) == error_body(path, exc)
    event = sse_error(exc)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert orjson.loads(event[6:]) == openai
    line = ndjson_error(exc)
    assert line.endswith(b"\n") and orjson.loads(line) == {"error": exc.message}
    # Anthropic's Messages API: its own shape, on its routes only, and its stream's tail.
    claude = error_body("/v1/messages", exc)
    assert claude["type"] == "error" and claude["error"]["message"] == exc.message
    assert claude["error"]["type"] in ANTHROPIC_TYPES
    assert error_body("/v1/messages/count_tokens", exc) == claude
    assert error_body("/v1/messagesx", exc) == openai
    tail = stream_error_tail("/v1/messages", exc)
    assert (
        tail.startswith(b"event: error\ndata: ")
        and orjson.loads(tail.split(b"data: ")[1]) == claude
    )
    assert stream_error_tail("/v1/chat/completions", exc).endswith(b"data: [DONE]\n\n")


def test_statuses_follow_the_fault():
    for kind in KINDS:
        if issubclass(kind, errors.ClientError):
            assert 400 <= kind.status < 500, kind
        elif issubclass(kind, errors.ServerError):
            assert 500 <= kind.status < 600, kind


def test_raw_responses_before_asgi_use_the_same_builder():
    raw = _response(b"431 Request Header Fields Too Large", b"request headers too large")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert orjson.loads(body) == {
        "error": {
            "message": "request headers too large",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_header_fields_too_large",
        }
    }
    assert f"content-length: {len(body)}".encode() in head


def test_an_error_kind_declared_elsewhere_keeps_its_type_across_the_socket():
    """The engine's GrammarError (a 400) reached clients as type server_error."""
    from mullama.engine.constraint import GrammarError

    exc = GrammarError("the constraint cannot be compiled: Invalid type", param="response_format")
    back = errors.MullamaError.from_wire(orjson.loads(orjson.dumps(exc.to_wire())))
    assert openai_body(back) == openai_body(exc)
    assert openai_body(back)["error"]["type"] == "invalid_request_error"
    assert back.status == 400
    assert isinstance(errors.MullamaError.from_wire({"kind": "Nope", "status": 502}),
                      errors.ServerError)  # fmt: skip
