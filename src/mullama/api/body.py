"""Reading and validating JSON request bodies without FastAPI's 422 machinery."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from ..errors import ClientError, InvalidParameter

M = TypeVar("M", bound=BaseModel)


def _place(err: Any, data: Any) -> tuple[str, int]:
    """Where an error is in the request as the client wrote it (``messages[0].content``),
    and how far into the request that is. Pydantic's ``loc`` also names the members of a
    union it tried (``str``, ``list[str]``, ``NamedToolChoice``): those are no part of
    the request, so only the steps that exist in it are kept (and a missing field)."""
    loc = err["loc"]
    parts: list[str] = []
    node = data
    for i, item in enumerate(loc):
        if isinstance(item, int) and isinstance(node, list) and 0 <= item < len(node):
            parts.append(f"[{item}]")
            node = node[item]
        elif isinstance(item, str) and isinstance(node, dict) and item in node:
            parts.append(f".{item}" if parts else item)
            node = node[item]
        elif isinstance(item, str) and isinstance(node, dict) and i == len(loc) - 1:
            if err["type"] == "missing":
                parts.append(f".{item}" if parts else item)
    return "".join(parts), len(parts)


async def parse_json(request: Request) -> dict:
    raw = await request.body()
    if not raw.strip():
        raise ClientError("the request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ClientError(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ClientError("the request body must be a JSON object")
    return data


def validate(model: type[M], data: dict) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Of the members of a union, the one that got furthest into the request is the
        # one the client meant (a tool_choice object: not the one of the literal names).
        errors = exc.errors(include_url=False)
        err = max(errors, key=lambda e: _place(e, data)[1])
        param = _place(err, data)[0]
        if not param:  # a rule about the whole body (e.g. "exactly one of a and b")
            raise InvalidParameter(f"Invalid request: {err['msg']}") from exc
        raise InvalidParameter(f"Invalid value for '{param}': {err['msg']}", param=param) from exc


async def parse_body(request: Request, model: type[M]) -> M:
    return validate(model, await parse_json(request))
