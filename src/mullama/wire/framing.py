"""How bodies are framed on the wire: JSON responses encoded with orjson, server-sent
events and newline-delimited JSON."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

SSE_DONE = b"data: [DONE]\n\n"


class ORJSONResponse(JSONResponse):
    """A JSON response encoded with orjson (FastAPI deprecated its own ORJSONResponse)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def sse(obj: Any, event: str | None = None) -> bytes:
    """One server-sent event: ``obj`` as its JSON data, under the ``event`` name when
    given (Anthropic's and the Responses API's streams name each event; OpenAI's and
    llama-server's do not)."""
    data = b"data: " + orjson.dumps(obj) + b"\n\n"
    return data if event is None else b"event: " + event.encode() + b"\n" + data


def ndjson_line(obj: Any) -> bytes:
    """One line of newline-delimited JSON (Ollama streams)."""
    return orjson.dumps(obj) + b"\n"
