"""What each route takes and answers, for the OpenAPI document at ``/openapi.json``
(daemon/openapi.py adds what the middleware answers), truthful enough to fuzz the daemon
with it (tests/e2e/test_fuzz.py, scripts/fuzz.sh).

Routes read their bodies themselves (api/body.py: our errors, never FastAPI's 422s), so
FastAPI cannot see what they take. Each route says it once, with ``@documented``: the
pydantic model it parses its body with, the model of its JSON answer, the media type of
its streamed answer and the model of one item of it, the errors of its own. Every error
is in the shape of the path's API (wire/errors.py).

A request model that refuses unknown fields (api/fields.py) is documented that way: an
unknown field may only carry a neutral value (null, false, [] or {}), a refused field
only its neutral values, and the fields accepted and ignored are listed as such.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from pydantic_core import core_schema

from .. import __version__
from ..wire.errors import ERROR_SCHEMAS, error_api
from .fields import Refusing

F = TypeVar("F", bound=Callable[..., Any])

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
JSON = "application/json"

# The errors of a route that runs a model: a bad request, an unknown model, a crashed
# engine (or a pull that failed), a model that is busy, loading or broken (503), one that
# cannot fit the memory budget (507).
MODEL_ERRORS = (400, 404, 502, 503, 507)


@dataclass(frozen=True)
class Doc:
    """What a route takes and answers, beyond what FastAPI sees."""

    body: type[BaseModel] | None = None  # the model the route parses its JSON body with
    body_required: bool = True
    ok: type[BaseModel] | None = None  # its JSON answer
    status: int = 200
    media: str = JSON  # the answer's media type (text/plain for /metrics)
    stream: str | None = None  # the media type of its streamed answer (SSE or NDJSON)
    chunk: type[BaseModel] | None = None  # one item of that stream (default: ``ok``)
    errors: tuple[int, ...] = ()  # the route's own error statuses
    also: Mapping[int, type[BaseModel] | None] = field(default_factory=dict)  # other answers
    example: Mapping[str, Any] | None = None  # a body ("model" becomes the daemon's first)


def documented(
    body: type[BaseModel] | None = None, ok: type[BaseModel] | None = None, **kw: Any
) -> Callable[[F], F]:
    """Mark a route's endpoint with its ``Doc`` (put it below the router's decorators)."""
    doc = Doc(body=body, ok=ok, **kw)

    def mark(fn: F) -> F:
        fn.__openapi_doc__ = doc  # type: ignore[attr-defined]
        return fn

    return mark


def doc_of(route: APIRoute) -> Doc | None:
    return getattr(route.endpoint, "__openapi_doc__", None)


# ---- the document ----------------------------------------------------------------------


def api_document(routes: list[APIRoute], model: str) -> dict[str, Any]:
    """The document of ``routes`` (those in the schema) with what they say of
    themselves; ``model``: the name the request examples use."""
    routes = [r for r in routes if r.include_in_schema]
    doc = get_openapi(title="Mullama", version=__version__, routes=routes)
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422: never sent
        schemas.pop(name, None)
    refs = _model_schemas(routes, schemas)
    schemas.update(ERROR_SCHEMAS)
    for route in routes:
        d = doc_of(route)
        for method in sorted(route.methods):
            op = doc["paths"][route.path_format][method.lower()]
            error = {"$ref": f"#/components/schemas/{error_api(route.path_format)}"}
            op["responses"] = _answers(d, refs, model, op, error) if d else op["responses"]
            op["responses"].pop("422", None)
            add_errors(op, route.path_format, d.errors if d else ())
    return copy.deepcopy(doc)  # no part shared with another document (ERROR_SCHEMAS, ...)


def add_errors(op: dict[str, Any], path: str, statuses: Iterable[int]) -> None:
    """Error answers with these statuses, in the shape of the path's API."""
    error = {"$ref": f"#/components/schemas/{error_api(path)}"}
    for status in sorted(statuses):
        op["responses"].setdefault(
            str(status),
            {"description": HTTPStatus(status).phrase, "content": {JSON: {"schema": error}}},
        )
    op["responses"] = dict(sorted(op["responses"].items()))


def _model_schemas(routes: list[APIRoute], schemas: dict[str, Any]) -> dict[type, Any]:
    """The JSON schemas of every model the routes name, their definitions into
    ``schemas``; returns each model's reference."""
    models: dict[tuple[type[BaseModel], str], None] = {}
    for route in routes:
        d = doc_of(route)
        if d is None:
            continue
        if d.body is not None:
            models[(d.body, "validation")] = None
        for m in (d.ok, d.chunk, *d.also.values()):
            if m is not None:
                models[(m, "serialization")] = None
    refs, defs = models_json_schema(
        list(models), ref_template="#/components/schemas/{model}", schema_generator=_Schema
    )
    schemas.update(defs.get("$defs", {}))
    return {m: ref for (m, _), ref in refs.items()}


_NEUTRAL: dict[str, Any] = {
    "anyOf": [
        {"type": "null"},
        {"const": False},
        {"type": "array", "maxItems": 0},
        {"type": "object", "maxProperties": 0},
    ]
}


class _Schema(GenerateJsonSchema):
    """Pydantic's JSON schema, plus what ``Refusing`` models refuse."""

    def model_schema(self, schema: core_schema.ModelSchema) -> dict[str, Any]:
        out = super().model_schema(schema)
        cls = schema["cls"]
        if self.mode == "validation" and issubclass(cls, Refusing) and "properties" in out:
            _refusals(out, cls)
        return out


_REPORTED = "listed in the Mullama-Ignored-Fields response header"


def _refusals(out: dict[str, Any], cls: type[Refusing]) -> None:
    """The fields api/fields.py refuses, hints at and ignores, as the default (tolerant)
    daemon takes them."""
    props = out["properties"]
    for name in sorted(cls.IGNORED):
        props.setdefault(
            name, {"description": f"accepted and ignored: it changes nothing here ({_REPORTED})"}
        )
    for name, why in cls.HINTS.items():
        props.setdefault(
            name,
            {"description": f"accepted and ignored ({_REPORTED}; refused with --strict-fields): {why}"},  # fmt: skip
        )
    for name, why in cls.REFUSED.items():
        values = list(cls.NEUTRAL.get(name, ()))
        neutral = [*_NEUTRAL["anyOf"], {"enum": values}] if values else _NEUTRAL["anyOf"]
        props.setdefault(name, {"anyOf": neutral, "description": f"not supported: {why}"})
    if cls.REFUSE_UNKNOWN:
        out["additionalProperties"] = {
            "description": f"other fields are accepted and ignored ({_REPORTED}); refused "
            "with --strict-fields"
        }


def _answers(
    d: Doc, refs: Mapping[type, Any], model: str, op: dict[str, Any], error: dict[str, Any]
) -> dict[str, Any]:
    """The request body and the answers that are not errors."""
    if d.body is not None:
        body: dict[str, Any] = {"schema": refs[d.body]}
        if d.example is not None:
            body["example"] = {**d.example, "model": model} if "model" in d.example else d.example
        op["requestBody"] = {"required": d.body_required, "content": {JSON: body}}
    for param in op.get("parameters", []):
        if param.get("in") == "path" and param.get("name") == "name":
            param["example"] = model
    content: dict[str, Any] = {}
    if d.ok is not None:
        content[d.media] = {"schema": refs[d.ok]}
    elif d.media != JSON:
        content[d.media] = {"schema": {"type": "string"}}
    if d.stream is not None:
        chunk = d.chunk or d.ok
        assert chunk is not None, "a streamed answer needs the model of its items"
        content[d.stream] = _stream(d.stream, {"anyOf": [refs[chunk], error]})
    answer: dict[str, Any] = {"description": HTTPStatus(d.status).phrase}
    if content:
        answer["content"] = content  # none: an empty body
    responses: dict[str, Any] = {str(d.status): answer}
    for status, m in d.also.items():
        other: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if m is not None:
            other["content"] = {JSON: {"schema": refs[m]}}
        responses[str(status)] = other
    return responses


def _stream(media: str, item: dict[str, Any]) -> dict[str, Any]:
    """A stream's media type object; ``item``: the schema of one of its JSON items (a
    chunk, or the error that ends the stream, in the API's shape)."""
    if media == SSE:  # OpenAPI 3.1: the schema of one event; its data is JSON, or [DONE]
        data = {"type": "string", "if": {"const": "[DONE]"},
                "else": {"contentMediaType": JSON, "contentSchema": item}}  # fmt: skip
        return {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {"event": {"type": "string"}, "data": data},
            }
        }
    return {
        "schema": {
            "type": "array",
            "items": item,
            "description": "one JSON object per line (read here as an array of the lines): "
            "the answer's pieces, the last with `done: true`, or an error that ends it",
        }
    }
