"""The table of refused, hinted and ignored request fields in docs/API.md, made from the
request models themselves (a unit test checks the doc holds it):
``python -c 'from mullama.api.reference import fields_markdown as f; print(f())'``."""

from __future__ import annotations

from .anthropic.schemas import Message as AnthropicMessage
from .anthropic.schemas import MessagesRequest, OutputConfig, TextBlock, Tool
from .fields import Refusing
from .llamaserver import CompletionBody
from .ollama.schemas import ChatBody, EmbedBody, GenerateBody, Message, Options
from .openai.responses import ReasoningConfig, ResponsesRequest, TextConfig
from .openai.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest, EmbeddingRequest

_ROWS: list[tuple[str, type[Refusing]]] = [
    ("`POST /v1/chat/completions`", ChatCompletionRequest),
    ("`POST /v1/chat/completions` `messages[]`", ChatMessage),
    ("`POST /v1/completions`", CompletionRequest),
    ("`POST /v1/embeddings`", EmbeddingRequest),
    ("`POST /v1/responses`", ResponsesRequest),
    ("`POST /v1/responses` `text`", TextConfig),
    ("`POST /v1/responses` `reasoning`", ReasoningConfig),
    ("`POST /v1/messages`", MessagesRequest),
    ("`POST /v1/messages` `messages[]`", AnthropicMessage),
    ("`POST /v1/messages` blocks (`system[]`, `messages[].content[]`)", TextBlock),
    ("`POST /v1/messages` `tools[]`", Tool),
    ("`POST /v1/messages` `output_config`", OutputConfig),
    ("`POST /api/chat`", ChatBody),
    ("`POST /api/chat` `messages[]`", Message),
    ("`POST /api/generate`", GenerateBody),
    ("`POST /api/embed`", EmbedBody),
    ("`options` of `/api/generate`, `/api/chat`, `/api/embed`", Options),
    ("`POST /completion`", CompletionBody),
]


def _names(cls: type[Refusing], names: list[str]) -> str:
    out = []
    for name in names:
        neutral = cls.NEUTRAL.get(name)
        but = f" (except {' or '.join(repr(v) for v in neutral)})" if neutral else ""
        out.append(f"`{name}`{but}")
    return ", ".join(out) or "(none)"


def _unknown(cls: type[Refusing]) -> str:
    return "refused with `--strict-fields`" if cls.REFUSE_UNKNOWN else "never refused"


def fields_markdown() -> str:
    lines = [
        "| request | refused: 400 naming the field | hints: refused with `--strict-fields` "
        "| accepted, changes nothing here | other fields |",
        "| --- | --- | --- | --- | --- |",
    ]
    for where, cls in _ROWS:
        refused = _names(cls, list(cls.REFUSED))
        hints = _names(cls, list(cls.HINTS))
        ignored = _names(cls, sorted(cls.IGNORED))
        lines.append(f"| {where} | {refused} | {hints} | {ignored} | {_unknown(cls)} |")
    return "\n".join(lines) + "\n"
