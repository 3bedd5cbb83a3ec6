"""/v1 routes: parse, call one service method, encode."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...models.adapters import card as adapters_card
from ...wire.framing import ORJSONResponse
from .. import answers as a
from ..body import parse_body
from ..fallback import answer
from ..openapi import MODEL_ERRORS, SSE, documented
from ..streaming import DisconnectAwareStream, unless_disconnected
from .responses import ResponsesRequest
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from .service import OpenAIService

router = APIRouter(prefix="/v1")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# Example bodies for /openapi.json ("model" becomes the daemon's first model).
_HI = [{"role": "user", "content": "Say hi."}]
CHAT = {"model": "", "messages": _HI, "max_tokens": 8}
COMPLETION = {"model": "", "prompt": "Once upon a time", "max_tokens": 8}
RESPONSE = {"model": "", "input": "Say hi.", "max_output_tokens": 8}
EMBEDDING = {"model": "", "input": "hello"}


def _service(request: Request) -> OpenAIService:
    return request.app.state.openai


def request_id(request: Request) -> str:
    return request.scope["state"]["request_id"]  # set by RequestStateMiddleware


async def respond(request: Request, result: object) -> Response:
    if isinstance(result, dict):
        return ORJSONResponse(result)
    return DisconnectAwareStream(result, media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/chat/completions")
@documented(
    ChatCompletionRequest,
    a.ChatCompletion,
    stream=SSE,
    chunk=a.ChatCompletionChunk,
    errors=MODEL_ERRORS,
    example=CHAT,
)
async def chat_completions(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    rid = request_id(request)
    return await respond(
        request, await answer(request, body, lambda b: _service(request).chat(b, rid))
    )


@router.post("/completions")
@documented(
    CompletionRequest,
    a.TextCompletion,
    stream=SSE,
    chunk=a.TextCompletionChunk,
    errors=MODEL_ERRORS,
    example=COMPLETION,
)
async def completions(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    rid = request_id(request)
    work = _service(request).completions
    return await respond(request, await answer(request, body, lambda b: work(b, rid)))


@router.post("/responses")
@documented(
    ResponsesRequest,
    a.ResponseObject,
    stream=SSE,
    chunk=a.ResponseStreamItem,
    errors=MODEL_ERRORS,
    example=RESPONSE,
)
async def create_response(request: Request) -> Response:
    body = await parse_body(request, ResponsesRequest)
    rid = request_id(request)
    work = request.app.state.responses.create
    return await respond(request, await answer(request, body, lambda b: work(b, rid)))


@router.get("/responses/{response_id}")
@documented(ok=a.ResponseObject, errors=(404,))
async def get_response(response_id: str, request: Request) -> Response:
    return ORJSONResponse(request.app.state.responses.get(response_id))


@router.delete("/responses/{response_id}")
@documented(ok=a.ResponseDeleted, errors=(404,))
async def delete_response(response_id: str, request: Request) -> Response:
    return ORJSONResponse(request.app.state.responses.delete(response_id))


@router.post("/embeddings")
@documented(EmbeddingRequest, a.EmbeddingList, errors=MODEL_ERRORS, example=EMBEDDING)
async def embeddings(request: Request) -> Response:
    body = await parse_body(request, EmbeddingRequest)
    return ORJSONResponse(await unless_disconnected(request, _service(request).embeddings(body)))


def _model_names(request: Request) -> list[str]:
    """The served models, the remote ones, then the other models in the store."""
    names = [*request.app.state.models.names, *request.app.state.models.remotes]
    store = getattr(request.app.state, "store", None)
    if store is not None:
        names += [n for n in store.names() if n not in names]
    return names


@router.get("/models")
@documented(ok=a.ModelList)
async def list_models(request: Request) -> Response:
    created = int(request.app.state.started_at)
    names = await asyncio.to_thread(_model_names, request)
    models = request.app.state.models
    data = [_card(n, created, models.remote(n) is not None, models) for n in names]
    return ORJSONResponse({"object": "list", "data": data})


def _card(name: str, created: int, remote: bool, models: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": "mullama"}
    if remote:
        out["remote"] = True
    else:
        out.update(adapters_card(models.options(name).lora))
    return out


@router.get("/models/{name:path}")
@documented(ok=a.ModelCard, errors=(400, 404))
async def get_model(name: str, request: Request) -> Response:
    models = request.app.state.models
    if models.remote(name) is None:
        await asyncio.to_thread(models.find, name)  # 404 if unknown
    created = int(request.app.state.started_at)
    return ORJSONResponse(_card(name, created, models.remote(name) is not None, models))
