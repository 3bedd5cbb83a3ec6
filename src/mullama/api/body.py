"""Reading and validating JSON request bodies without FastAPI's 422 machinery."""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from ..errors import ClientError, InvalidParameter

M = TypeVar("M", bound=BaseModel)


def _param(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("str", "list[str]", "function-after[_check_input(), list[str]]"):
            continue
        elif parts:
            parts.append(f".{item}")
        else:
            parts.append(str(item))
    return "".join(parts)


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
        err = exc.errors(include_url=False)[0]
        param = _param(tuple(err["loc"]))
        if not param:  # a rule about the whole body (e.g. "exactly one of a and b")
            raise InvalidParameter(f"Invalid request: {err['msg']}") from exc
        raise InvalidParameter(f"Invalid value for '{param}': {err['msg']}", param=param) from exc


async def parse_body(request: Request, model: type[M]) -> M:
    return validate(model, await parse_json(request))
