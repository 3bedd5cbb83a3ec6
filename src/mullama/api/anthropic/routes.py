"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``
(Claude Code and the ``anthropic`` SDK, pointed here with ``ANTHROPIC_BASE_URL``). Keys
come as ``x-api-key`` or a bearer token; ``anthropic-version`` is ignored. Errors are in
Anthropic's shape on these routes (wire/errors.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...wire.framing import ORJSONResponse
from .. import answers as a
from ..body import parse_body
from ..chat import Chat, openai_turns, tokenize_request
from ..fallback import answer
from ..openai.routes import request_id, respond
from ..openapi import MODEL_ERRORS, SSE, documented
from ..streaming import unless_disconnected
from .schemas import CountTokensRequest, MessagesRequest
from .service import AnthropicService, thinks

router = APIRouter(prefix="/v1")

# Example bodies for /openapi.json ("model" becomes the daemon's first model).
_HI = [{"role": "user", "content": "Say hi."}]
MESSAGES = {"model": "", "max_tokens": 8, "messages": _HI}
COUNT = {"model": "", "messages": _HI}


@router.post("/messages")
@documented(
    MessagesRequest,
    a.AnthropicMessage,
    stream=SSE,
    chunk=a.AnthropicEvent,
    errors=MODEL_ERRORS,
    example=MESSAGES,
)
async def messages(request: Request) -> Response:
    body = await parse_body(request, MessagesRequest)
    service: AnthropicService = request.app.state.anthropic
    rid = request_id(request)
    return await respond(request, await answer(request, body, lambda b: service.messages(b, rid)))


@router.post("/messages/count_tokens")
@documented(CountTokensRequest, a.TokenCount, errors=MODEL_ERRORS, example=COUNT)
async def count_tokens(request: Request) -> Response:
    body = await parse_body(request, CountTokensRequest)
    models = request.app.state.models
    target = models.route(body.model)  # the name resolved once for the request
    chat = body.to_chat(await thinks(models, target))
    counted = Chat(chat.model, openai_turns(chat.model, chat.messages), tools=chat.tools,
                   tool_choice=chat.tool_choice, think=body.think())  # fmt: skip
    req = await tokenize_request(models, counted, target)
    tokens, _ = await unless_disconnected(request, models.tokenize(target, req))
    return ORJSONResponse({"input_tokens": len(tokens.tokens)})
