"""Anthropic's Messages API on the chat engine path: a request becomes a chat request
(schemas.py), runs as one, and its reply is written as content blocks, whole or as
Anthropic's event stream."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ...errors import MullamaError
from ...wire.errors import anthropic_body
from ..openai.service import OpenAIService
from ..replies import Finished, Started, events, whole
from ..tools import CallArgs, CallDone, CallStart, Content
from .schemas import MessagesRequest


def event(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event of Anthropic's stream (named, its type in the data too)."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def _stop_reason(end: Finished) -> str:
    if end.finish == "tool_calls":
        return "tool_use"
    if end.finish == "length":
        return "max_tokens"
    return "stop_sequence" if end.stop is not None else "end_turn"


def _stop_sequence(end: Finished) -> str | None:
    """The stop sequence, only when it is what ended the reply."""
    return end.stop if _stop_reason(end) == "stop_sequence" else None


def _usage(prompt: int, completion: int, cached: int = 0) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` are those computed, the ones found in the KV
    cache are ``cache_read_input_tokens`` (together, the prompt)."""
    return {
        "input_tokens": prompt - cached,
        "output_tokens": completion,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


class AnthropicService:
    def __init__(self, chat: OpenAIService) -> None:
        self.chat = chat

    async def messages(self, body: MessagesRequest, rid: str) -> dict | AsyncIterator[bytes]:
        started = await self.chat.start_chat(body.to_chat(), rid)
        mid = f"msg_{uuid.uuid4().hex[:24]}"
        if body.stream:
            return self._stream(started, mid, body.model)
        reply = await whole(started)
        content: list[dict[str, Any]] = []
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
            "usage": _usage(
                reply.end.prompt_tokens or started.prompt_tokens,
                reply.end.completion_tokens,
                reply.end.cached_tokens,
            ),
        }

    async def _stream(self, started: Started, mid: str, model: str) -> AsyncIterator[bytes]:
        """message_start, ping, then each block (start, deltas, stop), message_delta and
        message_stop. A tool call's input goes out as the model writes it (raw JSON
        pieces that add up to the input)."""
        message = {"id": mid, "type": "message", "role": "assistant", "model": model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": _usage(started.prompt_tokens, 0)}  # fmt: skip
        yield event("message_start", {"message": message})
        yield event("ping", {})
        index = -1
        open_text = False
        open_call = False
        try:
            async for e in events(started):
                if isinstance(e, Content):
                    if not e.text:
                        continue
                    if not open_text:
                        index += 1
                        open_text = True
                        block = {"type": "text", "text": ""}
                        yield event("content_block_start", {"index": index, "content_block": block})
                    delta = {"type": "text_delta", "text": e.text}
                    yield event("content_block_delta", {"index": index, "delta": delta})
                elif isinstance(e, CallStart):
                    if open_text:
                        yield event("content_block_stop", {"index": index})
                        open_text = False
                    index += 1
                    open_call = True
                    block = {"type": "tool_use", "id": e.id, "name": e.name, "input": {}}
                    yield event("content_block_start", {"index": index, "content_block": block})
                elif isinstance(e, CallArgs):
                    delta = {"type": "input_json_delta", "partial_json": e.piece}
                    yield event("content_block_delta", {"index": index, "delta": delta})
                elif isinstance(e, CallDone):
                    open_call = False
                    yield event("content_block_stop", {"index": index})
                elif isinstance(e, Finished):
                    if open_text or open_call:  # a call max_tokens cut: its block ends too
                        yield event("content_block_stop", {"index": index})
                    delta = {"stop_reason": _stop_reason(e), "stop_sequence": _stop_sequence(e)}
                    usage = {"output_tokens": e.completion_tokens,
                             "input_tokens": (e.prompt_tokens or started.prompt_tokens)
                             - e.cached_tokens,
                             "cache_read_input_tokens": e.cached_tokens}  # fmt: skip
                    yield event("message_delta", {"delta": delta, "usage": usage})
                    yield event("message_stop", {})
        except MullamaError as exc:
            yield event("error", {"error": anthropic_body(exc)["error"]})
