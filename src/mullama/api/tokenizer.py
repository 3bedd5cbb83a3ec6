"""The model's tokenizer over HTTP, in vLLM's shapes: ``POST /tokenize`` (text, or chat
messages through the model's template), ``POST /detokenize`` and ``GET /tokenizer_info``,
also under ``/v1``. With these, lm-evaluation-harness's ``local-completions`` needs no
Hugging Face tokenizer. ``model`` may be left out: the first model given with --model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ConfigDict, Field, model_validator

from ..engine.protocol import TokenizeRequest
from ..errors import ClientError
from ..models.manager import ModelManager
from ..wire.framing import ORJSONResponse
from . import answers as a
from .body import parse_body
from .chat import Chat, openai_turns, tokenize_request
from .fields import Refusing
from .openai.schemas import ChatMessage
from .openapi import MODEL_ERRORS, documented
from .profiles import profile_of
from .tools import ToolSpec

router = APIRouter()

_CONFIG = ConfigDict(extra="ignore", strict=True)


class TokenizeBody(Refusing):
    model_config = _CONFIG
    # vLLM's fields that would count another rendering than the model's own.
    REFUSED: ClassVar[Mapping[str, str]] = {
        "chat_template": "the model's own (or its custom model's) template renders messages",
    }

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool | None = None  # default: on for a prompt, off for messages
    add_generation_prompt: bool = True
    return_token_strs: bool = False
    tools: list[ToolSpec] | None = None  # as a chat request with these tools renders them
    # As a chat request with these renders them (its thinking switch among them).
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeBody:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        if self.messages is not None and self.add_special_tokens is not None:
            # Messages get exactly the tokens a chat request feeds the model (the
            # template decides about BOS); a setting that would differ is refused.
            raise ValueError("add_special_tokens applies to prompt only")
        return self


class DetokenizeBody(Refusing):
    model_config = _CONFIG

    model: str | None = None
    tokens: list[int]


def _models(request: Request) -> ModelManager:
    return request.app.state.models


def _name(models: ModelManager, given: str | None) -> str:
    name = given or models.default_name
    if not name:
        raise ClientError("you must provide a model parameter", param="model")
    return name


@documented(TokenizeBody, a.Tokens, errors=MODEL_ERRORS, example={"prompt": "Hello world"})
async def _tokenize(request: Request) -> Response:
    body = await parse_body(request, TokenizeBody)
    models = _models(request)
    name = _name(models, body.model)
    target = models.route(name)  # the name resolved once for the request
    if body.messages is not None:
        chat = Chat(name, openai_turns(name, body.messages), tools=body.tools,
                    template_vars=body.chat_template_kwargs)  # fmt: skip
        req = await tokenize_request(models, chat, target)
        req.add_generation_prompt = body.add_generation_prompt
        req.with_pieces = body.return_token_strs
    else:
        req = TokenizeRequest(id="", with_pieces=body.return_token_strs, text=body.prompt)
        req.add_special = body.add_special_tokens is not False
    tokens, info = await models.tokenize(target, req)
    out: dict[str, Any] = {
        "count": len(tokens.tokens),
        "max_model_len": info.context_size,
        "tokens": tokens.tokens,
        "token_strs": tokens.pieces,
    }
    return ORJSONResponse(out)


@documented(DetokenizeBody, a.Detokenized, errors=MODEL_ERRORS, example={"tokens": [19556]})
async def _detokenize(request: Request) -> Response:
    body = await parse_body(request, DetokenizeBody)
    models = _models(request)
    text = await models.detokenize(_name(models, body.model), body.tokens)
    return ORJSONResponse({"prompt": text})


@documented(ok=a.TokenizerInfoAnswer, errors=(400, 404, 409))
async def _tokenizer_info(request: Request, model: str | None = None) -> Response:
    models = _models(request)
    name = _name(models, model)
    info = models.loaded_info(name)  # a GET never loads (or evicts) a model
    template = profile_of(models, name).template or info.chat_template
    return ORJSONResponse(
        {
            "model": name,
            "tokenizer_class": "llama.cpp (GGUF vocabulary)",
            "vocab_size": info.n_vocab,
            "bos_token": info.bos_token or None,
            "eos_token": info.eos_token or None,
            "add_bos_token": info.add_bos,
            "model_max_length": info.context_size,
            "chat_template": template,
        }
    )


for prefix in ("", "/v1"):
    router.add_api_route(f"{prefix}/tokenize", _tokenize, methods=["POST"])
    router.add_api_route(f"{prefix}/detokenize", _detokenize, methods=["POST"])
    router.add_api_route(f"{prefix}/tokenizer_info", _tokenizer_info, methods=["GET"])
