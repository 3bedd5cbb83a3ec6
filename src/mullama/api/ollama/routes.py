"""Ollama-compatible routes (/api/*): parse, call one service method, encode as NDJSON."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from ... import __version__
from ...access import admin
from ...wire.framing import ORJSONResponse
from .. import answers as a
from ..body import parse_body
from ..disclosure import sees_paths
from ..fallback import answer
from ..openapi import MODEL_ERRORS, NDJSON, documented
from ..streaming import DisconnectAwareStream, unless_disconnected
from ..ui import wants_html
from .manage import ModelAdmin
from .models import OllamaModels
from .schemas import (
    ChatBody,
    CopyBody,
    CreateBody,
    EmbedBody,
    EmbeddingsBody,
    GenerateBody,
    ModelBody,
    PullBody,
)
from .service import OllamaService

router = APIRouter()

# Example bodies for /openapi.json ("model" becomes the daemon's first model).
_FEW = {"num_predict": 8}
GENERATE = {"model": "", "prompt": "Why is the sky blue?", "stream": False, "options": _FEW}
CHAT = {"model": "", "messages": [{"role": "user", "content": "Say hi."}], "stream": False,
        "options": _FEW}  # fmt: skip
EMBED = {"model": "", "input": "hello"}
EMBEDDINGS = {"model": "", "prompt": "hello"}
SHOW = {"model": ""}


def _service(request: Request) -> OllamaService:
    return request.app.state.ollama


def _rid(request: Request) -> str:
    return request.scope["state"]["request_id"]  # set by RequestStateMiddleware


def _respond(result: object) -> Response:
    if isinstance(result, dict):
        return ORJSONResponse(result)
    return DisconnectAwareStream(result, media_type="application/x-ndjson")


@router.get("/")
@router.head("/")
@documented(media="text/plain", also={307: None})
async def root(request: Request) -> Response:
    """Ollama's "is running" text for clients; a browser is sent to the web UI."""
    if request.app.state.settings.ui and wants_html(request):
        return RedirectResponse("/ui/", status_code=307)
    return PlainTextResponse("Mullama is running")


@router.get("/api/version")
@router.head("/api/version")
@documented(ok=a.Version)
async def version() -> ORJSONResponse:
    return ORJSONResponse({"version": __version__})


@router.post("/api/generate")
@documented(GenerateBody, a.GenerateAnswer, stream=NDJSON, errors=MODEL_ERRORS, example=GENERATE)
async def generate(request: Request) -> Response:
    body = await parse_body(request, GenerateBody)
    rid = _rid(request)
    return _respond(await answer(request, body, lambda b: _service(request).generate(b, rid)))


@router.post("/api/chat")
@documented(ChatBody, a.ChatAnswer, stream=NDJSON, errors=MODEL_ERRORS, example=CHAT)
async def chat(request: Request) -> Response:
    body = await parse_body(request, ChatBody)
    rid = _rid(request)
    return _respond(await answer(request, body, lambda b: _service(request).chat(b, rid)))


@router.post("/api/embed")
@documented(EmbedBody, a.Embeds, errors=MODEL_ERRORS, example=EMBED)
async def embed(request: Request) -> Response:
    body = await parse_body(request, EmbedBody)
    return ORJSONResponse(await unless_disconnected(request, _service(request).embed(body)))


@router.post("/api/embeddings")
@documented(EmbeddingsBody, a.OneEmbedding, errors=MODEL_ERRORS, example=EMBEDDINGS)
async def embeddings(request: Request) -> Response:
    body = await parse_body(request, EmbeddingsBody)
    return ORJSONResponse(await unless_disconnected(request, _service(request).embeddings(body)))


def _models(request: Request) -> OllamaModels:
    return request.app.state.ollama_models


@router.get("/api/tags")
@documented(ok=a.Tags)
async def tags(request: Request) -> ORJSONResponse:
    return ORJSONResponse({"models": await _models(request).tags()})


@router.get("/api/ps")
@documented(ok=a.RunningModels)
async def ps(request: Request) -> ORJSONResponse:
    return ORJSONResponse({"models": await _models(request).ps()})


@router.get("/api/models")
@documented(ok=a.RunningModels)
async def all_models(request: Request) -> ORJSONResponse:
    return ORJSONResponse({"models": await _models(request).catalog(sees_paths(request))})


@router.post("/api/models/{name:path}/load")
@documented(ok=a.ModelAction, errors=MODEL_ERRORS)
@admin
async def load_model(name: str, request: Request) -> ORJSONResponse:
    seconds = await request.app.state.models.load(name)
    return ORJSONResponse({"model": name, "status": "loaded", "load_seconds": round(seconds, 3)})


@router.post("/api/models/{name:path}/unload")
@documented(ok=a.ModelAction, errors=(400, 404))
@admin
async def unload_model(name: str, request: Request) -> ORJSONResponse:
    was = await request.app.state.models.unload(name)
    return ORJSONResponse({"model": name, "status": "unloaded", "was_loaded": was})


@router.post("/api/models/{name:path}/pin")
@documented(ok=a.ModelAction, errors=(400, 404))
@admin
async def pin_model(name: str, request: Request) -> ORJSONResponse:
    served = request.app.state.models.pin(name, True)
    return ORJSONResponse({"model": served.entry.name, "status": "pinned", "pinned": True})


@router.post("/api/models/{name:path}/unpin")
@documented(ok=a.ModelAction, errors=(400, 404))
@admin
async def unpin_model(name: str, request: Request) -> ORJSONResponse:
    served = request.app.state.models.pin(name, False)
    return ORJSONResponse({"model": served.entry.name, "status": "unpinned", "pinned": False})


@router.post("/api/show")
@documented(ModelBody, a.ShowAnswer, errors=(400, 404), example=SHOW)
async def show(request: Request) -> ORJSONResponse:
    body = await parse_body(request, ModelBody)
    return ORJSONResponse(await _models(request).show(body.target(), sees_paths(request)))


# ---- model management on the store -----------------------------------------------------


def _admin(request: Request) -> ModelAdmin:
    return request.app.state.model_admin


@router.post("/api/pull")
@documented(PullBody, a.Progress, stream=NDJSON, errors=(400, 404, 502, 507))
@admin
async def pull(request: Request) -> Response:
    body = await parse_body(request, PullBody)
    return _respond(await _admin(request).pull(body))


@router.delete("/api/delete")
@documented(ModelBody, errors=(400, 404))
@admin
async def delete(request: Request) -> Response:
    body = await parse_body(request, ModelBody)
    await _admin(request).delete(body)
    return Response(status_code=200)


@router.post("/api/copy")
@documented(CopyBody, errors=(400, 404, 409))
@admin
async def copy(request: Request) -> Response:
    body = await parse_body(request, CopyBody)
    await _admin(request).copy(body)
    return Response(status_code=200)


@router.post("/api/create")
@documented(CreateBody, a.Progress, stream=NDJSON, errors=(400, 404, 409))
@admin
async def create(request: Request) -> Response:
    body = await parse_body(request, CreateBody)
    return _respond(await _admin(request).create(body))
