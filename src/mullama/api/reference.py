"""The table of refused and ignored request fields in docs/API.md, made from the request
models themselves (a unit test checks the doc holds it):
``python -c 'from mullama.api.reference import fields_markdown as f; print(f())'``."""

from __future__ import annotations

from .anthropic.schemas import MessagesRequest
from .fields import Refusing
from .ollama.schemas import ChatBody, EmbedBody, GenerateBody, Message, Options
from .openai.responses import ResponsesRequest
from .openai.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest, EmbeddingRequest

_ROWS: list[tuple[str, type[Refusing]]] = [
    ("`POST /v1/chat/completions`", ChatCompletionRequest),
    ("`POST /v1/chat/completions` `messages[]`", ChatMessage),
    ("`POST /v1/completions`", CompletionRequest),
    ("`POST /v1/embeddings`", EmbeddingRequest),
    ("`POST /v1/responses`", ResponsesRequest),
    ("`POST /v1/messages`", MessagesRequest),
    ("`POST /api/chat`", ChatBody),
    ("`POST /api/chat` `messages[]`", Message),
    ("`POST /api/generate`", GenerateBody),
    ("`POST /api/embed`", EmbedBody),
    ("`options` of `/api/generate`, `/api/chat`, `/api/embed`", Options),
]


def _refused(cls: type[Refusing]) -> str:
    out = []
    for name in cls.REFUSED:
        neutral = cls.NEUTRAL.get(name)
        but = f" (accepted as {' or '.join(repr(v) for v in neutral)})" if neutral else ""
        out.append(f"`{name}`{but}")
    return ", ".join(out) or "(none)"


def fields_markdown() -> str:
    lines = [
        "| request | refused: 400 naming the field | accepted and ignored |",
        "| --- | --- | --- |",
    ]
    for where, cls in _ROWS:
        ignored = ", ".join(f"`{n}`" for n in sorted(cls.IGNORED)) or "(none)"
        lines.append(f"| {where} | {_refused(cls)} | {ignored} |")
    return "\n".join(lines) + "\n"
