"""Anthropic's Messages API on the chat engine path: a request becomes a chat request
(schemas.py), runs as one, and its reply is written as content blocks, whole or as
Anthropic's event stream. The model's thinking comes first, as a ``thinking`` block with
a signature: an opaque digest of the thinking (Anthropic's are encrypted checks that its
own servers verify; a client only keeps it and sends it back, which Mullama takes
unverified)."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import orjson

from ...errors import MullamaError
from ...wire.errors import anthropic_body
from ...wire.framing import sse
from ..callreader import CallArgs, CallDone, CallStart
from ..chat import openai_chat, start_chat
from ..profiles import profile_of
from ..replies import Event, Finished, Reasoning, Started, Text, Usage, whole
from ..thinking import probe
from .schemas import MessagesRequest

if TYPE_CHECKING:
    from ...models.manager import ModelManager
    from ...models.router import Target


def event(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event of Anthropic's stream (named, its type in the data too)."""
    return sse({"type": name, **data}, event=name)


def _stop_reason(end: Finished) -> str:
    if end.finish == "tool_calls":
        return "tool_use"
    if end.finish == "length":
        return "max_tokens"
    return "stop_sequence" if end.stop is not None else "end_turn"


def _stop_sequence(end: Finished) -> str | None:
    """The stop sequence, only when it is what ended the reply."""
    return end.stop if _stop_reason(end) == "stop_sequence" else None


def _usage(usage: Usage) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` are those computed, the ones found in the KV
    cache are ``cache_read_input_tokens`` (together, the prompt)."""
    return {
        "input_tokens": usage.prompt - usage.cached,
        "output_tokens": usage.completion,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached,
    }


def _signature(digest: Any) -> str:
    """A thinking block's signature: its thinking's digest (``hashlib.sha256``), opaque."""
    return base64.b64encode(digest.digest()).decode()


def _thinking_block(thinking: str) -> dict[str, str]:
    signature = _signature(hashlib.sha256(thinking.encode()))
    return {"type": "thinking", "thinking": thinking, "signature": signature}


async def thinks(models: ModelManager, target: Target) -> bool:
    """Whether the template that renders the model's chat has a thinking format (then a
    request's ``thinking`` and effort are acted on)."""
    return await probe(profile_of(models, target).chat_template) is not None


class AnthropicService:
    def __init__(self, models: ModelManager) -> None:
        self.models = models

    async def messages(self, body: MessagesRequest, rid: str) -> dict | AsyncIterator[bytes]:
        target = self.models.route(body.model)  # the name resolved once for the request
        chat = openai_chat(body.to_chat(await thinks(self.models, target)))
        chat.think = body.think()
        [started] = await start_chat(self.models, chat, rid, target)
        mid = f"msg_{uuid.uuid4().hex[:24]}"
        if body.stream:
            return _stream(started, mid, body.model)
        reply = await whole(started)
        content: list[dict[str, Any]] = []
        if reply.reasoning:
            content.append(_thinking_block(reply.reasoning))
        if reply.text:
            content.append({"type": "text", "text": reply.text})
        for call in reply.calls:
            fn = call["function"]
            content.append({"type": "tool_use", "id": call["id"], "name": fn["name"],
                            "input": orjson.loads(fn["arguments"])})  # fmt: skip
        return {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": body.model,
            "content": content,
            "stop_reason": _stop_reason(reply.end),
            "stop_sequence": _stop_sequence(reply.end),
            "usage": _usage(reply.end.usage),
        }


async def _stream(started: Started, mid: str, model: str) -> AsyncIterator[bytes]:
    """message_start, ping, then each block (start, deltas, stop), message_delta and
    message_stop. A tool call's input goes out as the model writes it (raw JSON pieces
    that add up to the input)."""
    message = {"id": mid, "type": "message", "role": "assistant", "model": model,
               "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": _usage(Usage(started.prompt_tokens, 0, 0))}  # fmt: skip
    yield event("message_start", {"message": message})
    yield event("ping", {})
    blocks = _Blocks()
    try:
        async with aclosing(started.events()) as events:
            async for e in events:
                for out in blocks.encode(e):
                    yield out
    except MullamaError as exc:
        yield event("error", {"error": anthropic_body(exc)["error"]})


class _Blocks:
    """A reply's events as Anthropic's content blocks: a thinking block for the model's
    thinking (its pieces as ``thinking_delta``, its signature as one ``signature_delta``
    before it ends), a text block for each run of text, a tool_use block for each call."""

    def __init__(self) -> None:
        self.index = -1
        self.open_text = False
        self.open_call = False
        self.thought: Any = None  # the open thinking block's digest

    def _think(self, e: Reasoning) -> list[bytes]:
        out = []
        if self.open_text:  # thinking after text (an upstream's): the text block ends first
            out.append(event("content_block_stop", {"index": self.index}))
            self.open_text = False
        if self.thought is None:
            self.index += 1
            self.thought = hashlib.sha256()
            block = {"type": "thinking", "thinking": "", "signature": ""}
            out.append(event("content_block_start", {"index": self.index, "content_block": block}))
        self.thought.update(e.text.encode())
        delta = {"type": "thinking_delta", "thinking": e.text}
        out.append(event("content_block_delta", {"index": self.index, "delta": delta}))
        return out

    def _end_thinking(self) -> list[bytes]:
        """The thinking block's signature and end, once the reply goes on past it."""
        if self.thought is None:
            return []
        delta = {"type": "signature_delta", "signature": _signature(self.thought)}
        self.thought = None
        return [
            event("content_block_delta", {"index": self.index, "delta": delta}),
            event("content_block_stop", {"index": self.index}),
        ]

    def encode(self, e: Event) -> list[bytes]:
        if isinstance(e, Reasoning):
            return self._think(e)
        out = self._end_thinking() if not isinstance(e, Text) or e.text else []
        if isinstance(e, Text):
            if e.text and not self.open_text:
                self.index += 1
                self.open_text = True
                block = {"type": "text", "text": ""}
                out.append(
                    event("content_block_start", {"index": self.index, "content_block": block})
                )
            if e.text:
                delta = {"type": "text_delta", "text": e.text}
                out.append(event("content_block_delta", {"index": self.index, "delta": delta}))
        elif isinstance(e, CallStart):
            if self.open_text:
                out.append(event("content_block_stop", {"index": self.index}))
                self.open_text = False
            self.index += 1
            self.open_call = True
            block = {"type": "tool_use", "id": e.id, "name": e.name, "input": {}}
            out.append(event("content_block_start", {"index": self.index, "content_block": block}))
        elif isinstance(e, CallArgs):
            delta = {"type": "input_json_delta", "partial_json": e.piece}
            out.append(event("content_block_delta", {"index": self.index, "delta": delta}))
        elif isinstance(e, CallDone):
            self.open_call = False
            out.append(event("content_block_stop", {"index": self.index}))
        else:
            if self.open_text or self.open_call:  # a call max_tokens cut: its block ends too
                out.append(event("content_block_stop", {"index": self.index}))
            delta = {"stop_reason": _stop_reason(e), "stop_sequence": _stop_sequence(e)}
            u = e.usage
            usage = {"output_tokens": u.completion, "input_tokens": u.prompt - u.cached,
                     "cache_read_input_tokens": u.cached}  # fmt: skip
            out.append(event("message_delta", {"delta": delta, "usage": usage}))
            out.append(event("message_stop", {}))
        return out
