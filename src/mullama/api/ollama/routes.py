"""Ollama-compatible routes (/api/*): parse, call one service method, encode as NDJSON."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from ... import __version__
from ..body import parse_body
from ..fallback import answer
from ..responses import ORJSONResponse
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


def _service(request: Request) -> OllamaService:
    return request.app.state.ollama


def _rid(request: Request) -> str:
    return request.scope["state"]["request_id"]  # set by RequestIdMiddleware


def _respond(result: object) -> Response:
    if isinstance(result, dict):
        return ORJSONResponse(result)
    return DisconnectAwareStream(result, media_type="application/x-ndjson")


@router.get("/")
@router.head("/")
async def root(request: Request) -> Response:
    """Ollama's "is running" text for clients; a browser is sent to the web UI."""
    if request.app.state.settings.ui and wants_html(request):
        return RedirectResponse("/ui/", status_code=307)
    return PlainTextResponse("Mullama is running")


@router.get("/api/version")
@router.head("/api/version")
async def version() -> ORJSONResponse:
    return ORJSONResponse({"version": __version__})


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    body = await parse_body(request, GenerateBody)
    rid = _rid(request)
    return _respond(await answer(request, body, lambda b: _service(request).generate(b, rid)))


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    body = await parse_body(request, ChatBody)
    rid = _rid(request)
    return _respond(await answer(request, body, lambda b: _service(request).chat(b, rid)))


@router.post("/api/embed")
async def embed(request: Request) -> Response:
    body = await parse_body(request, EmbedBody)
    return ORJSONResponse(await unless_disconnected(request, _service(request).embed(body)))


@router.post("/api/embeddings")
async def embeddings(request: Request) -> Response:
    body = await parse_body(request, EmbeddingsBody)
    return ORJSONResponse(await unless_disconnected(request, _service(request).embeddings(body)))


def _models(request: Request) -> OllamaModels:
    return request.app.state.ollama_models


@router.get("/api/tags")
async def tags(request: Request) -> ORJSONResponse:
    return ORJSONResponse({"models": await _models(request).tags()})


@router.get("/api/ps")
async def ps(request: Request) -> ORJSONResponse:
    return ORJSONResponse({"models": await _models(request).ps()})


@router.get("/api/models")
async def all_models(request: Request) -> ORJSONResponse:
    return ORJSONResponse({"models": await _models(request).catalog()})


@router.post("/api/models/{name:path}/load")
async def load_model(name: str, request: Request) -> ORJSONResponse:
    seconds = await request.app.state.models.load(name)
    return ORJSONResponse({"model": name, "status": "loaded", "load_seconds": round(seconds, 3)})


@router.post("/api/models/{name:path}/unload")
async def unload_model(name: str, request: Request) -> ORJSONResponse:
    was = await request.app.state.models.unload(name)
    return ORJSONResponse({"model": name, "status": "unloaded", "was_loaded": was})


@router.post("/api/models/{name:path}/pin")
async def pin_model(name: str, request: Request) -> ORJSONResponse:
    served = request.app.state.models.pin(name, True)
    return ORJSONResponse({"model": served.entry.name, "status": "pinned", "pinned": True})


@router.post("/api/models/{name:path}/unpin")
async def unpin_model(name: str, request: Request) -> ORJSONResponse:
    served = request.app.state.models.pin(name, False)
    return ORJSONResponse({"model": served.entry.name, "status": "unpinned", "pinned": False})


@router.post("/api/show")
async def show(request: Request) -> ORJSONResponse:
    body = await parse_body(request, ModelBody)
    return ORJSONResponse(await _models(request).show(body.target()))


# ---- model management on the store -----------------------------------------------------


def _admin(request: Request) -> ModelAdmin:
    return request.app.state.model_admin


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    body = await parse_body(request, PullBody)
    return _respond(await _admin(request).pull(body))


@router.delete("/api/delete")
async def delete(request: Request) -> Response:
    body = await parse_body(request, ModelBody)
    await _admin(request).delete(body)
    return Response(status_code=200)


@router.post("/api/copy")
async def copy(request: Request) -> Response:
    body = await parse_body(request, CopyBody)
    await _admin(request).copy(body)
    return Response(status_code=200)


@router.post("/api/create")
async def create(request: Request) -> Response:
    body = await parse_body(request, CreateBody)
    return _respond(await _admin(request).create(body))
