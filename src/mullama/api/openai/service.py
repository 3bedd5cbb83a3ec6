"""OpenAI-compatible completions, chat completions and embeddings on top of the model
manager."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from ...engine.protocol import shorten
from ...errors import MullamaError
from ...wire.errors import sse_error
from ...wire.framing import SSE_DONE, sse
from ..callreader import CallArgs, CallStart
from ..chat import completion_requests, openai_chat, start, start_chat
from ..logprobs import CompletionLogprobs, chat_content
from ..profiles import profile_of
from ..replies import (
    Event,
    Finished,
    Reasoning,
    Started,
    Text,
    Usage,
    WholeReply,
    merged_events,
    wholes,
)
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

if TYPE_CHECKING:
    from ...models.manager import ModelManager


def _usage(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage; ``cached_tokens``: the prompt tokens found in the KV cache;
    ``reasoning_tokens``: the generated tokens that were thinking (only for a reply that
    thought)."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion,
        "total_tokens": usage.prompt + usage.completion,
        "prompt_tokens_details": {"cached_tokens": usage.cached},
    }
    if usage.reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning}
    return out


def _total(usages: list[Usage], per_prompt: int = 1) -> Usage:
    """A request's usage from its choices': each prompt counted once (``per_prompt``:
    choices per prompt), every choice's generated tokens."""
    firsts = usages[::per_prompt]
    return Usage(sum(u.prompt for u in firsts), sum(u.cached for u in firsts),
                 sum(u.completion for u in usages), sum(u.reasoning for u in usages))  # fmt: skip


class OpenAIService:
    def __init__(self, models: ModelManager) -> None:
        self.models = models

    # ---- chat ------------------------------------------------------------------------

    async def chat(self, req: ChatCompletionRequest, rid: str) -> dict | AsyncIterator[bytes]:
        started = await start_chat(self.models, openai_chat(req), rid)
        out = _ChatOut(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), req)
        if req.stream:
            return out.stream(started)
        replies = await wholes(started)
        return {
            "id": out.cid,
            "object": "chat.completion",
            "created": out.created,
            "model": req.model,
            "choices": [
                {
                    "index": i,
                    "message": _message(r),
                    "logprobs": {"content": chat_content(r.end.logprobs)} if req.logprobs else None,
                    "finish_reason": r.end.finish,
                }
                for i, r in enumerate(replies)
            ],
            "usage": _usage(_total([r.end.usage for r in replies], len(replies))),
        }  # fmt: skip

    # ---- completions ---------------------------------------------------------------

    async def completions(self, req: CompletionRequest, rid: str) -> dict | AsyncIterator[bytes]:
        target = self.models.route(req.model)  # the name resolved once for the request
        requests = completion_requests(req, rid, profile_of(self.models, target))
        started = await start(self.models, target, requests, req.keep_alive)
        try:
            prompts = await self._echoed(req) if req.echo else []
        except BaseException:
            for s in started:
                await s.gen.aclose()
            raise
        echo = [prompts[i // req.n] for i in range(len(started))] if req.echo else None
        out = _CompletionOut(f"cmpl-{uuid.uuid4().hex}", int(time.time()), req, echo)
        if req.stream:
            return out.stream(started)
        replies = await wholes(started)
        return {
            **out.base,
            "choices": [
                {
                    "index": i,
                    "text": out.prefix[i] + r.text,
                    "logprobs": (
                        CompletionLogprobs().add(r.end.logprobs)
                        if req.logprobs is not None
                        else None
                    ),
                    "finish_reason": r.end.reason,
                }
                for i, r in enumerate(replies)
            ],
            "usage": _usage(_total([r.end.usage for r in replies], req.n)),
        }

    async def _echoed(self, req: CompletionRequest) -> list[str]:
        """The prompts' text, for ``echo`` (token prompts are detokenized)."""
        out = []
        for prompt in req.prompts():
            if isinstance(prompt, str):
                out.append(prompt)
            else:
                out.append(await self.models.detokenize(req.model, prompt, req.keep_alive))
        return out

    # ---- embeddings ----------------------------------------------------------------

    async def embeddings(self, req: EmbeddingRequest) -> dict:
        inputs = [req.input] if isinstance(req.input, str) else req.input
        result = await self.models.embed(req.model, inputs, keep_alive=req.keep_alive)
        vectors = shorten(result.vectors, req.dimensions)
        encode = _base64_floats if req.encoding_format == "base64" else (lambda v: v)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(v)}
                for i, v in enumerate(vectors)
            ],
            "model": req.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }


def _base64_floats(vec: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()


def _message(reply: WholeReply) -> dict[str, Any]:
    """A whole reply as a chat message; its thinking, when it thought, under both the
    names clients read (``reasoning_content``: vLLM's and llama-server's; ``reasoning``)."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.calls:
        message.update(content=reply.text or None, tool_calls=reply.calls)
    if reply.reasoning:
        message["reasoning_content"] = message["reasoning"] = reply.reasoning
    return message


def _delta(e: Event) -> dict[str, Any] | None:
    """A streamed chat event as a choice's delta (None: the event sends none)."""
    if isinstance(e, Text):
        return {"content": e.text}
    if isinstance(e, Reasoning):
        return {"reasoning_content": e.text, "reasoning": e.text}
    if isinstance(e, CallStart):
        return {"tool_calls": [{"index": e.index, "id": e.id, "type": "function",
                                "function": {"name": e.name, "arguments": ""}}]}  # fmt: skip
    if isinstance(e, CallArgs):
        return {"tool_calls": [{"index": e.index, "function": {"arguments": e.piece}}]}
    return None


class _ChatOut:
    """A chat completion's stream: one ``chat.completion.chunk`` per delta of each choice.
    With tools, a reply that may be a call is held back until it is known (the reader):
    sent as tool-call deltas if it is one, as text if not."""

    def __init__(self, cid: str, created: int, req: ChatCompletionRequest) -> None:
        self.cid, self.created, self.model = cid, created, req.model
        self.logprobs = req.logprobs
        self.include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(
        self, index: int, delta: dict[str, Any], finish: str | None, entries: Any = None
    ) -> bytes:
        lp = {"content": chat_content(entries)} if entries else None
        obj: dict[str, Any] = {
            "id": self.cid,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}],
        }
        if self.include_usage:
            obj["usage"] = None
        return sse(obj)

    async def stream(self, started: list[Started]) -> AsyncIterator[bytes]:
        usages: list[Usage] = [Usage(0, 0, 0) for _ in started]
        try:
            for i in range(len(started)):
                yield self.chunk(i, {"role": "assistant", "content": ""}, None)
            async with aclosing(merged_events(started)) as events:
                async for i, e in events:
                    if isinstance(e, Finished):
                        usages[i] = e.usage
                        yield self.chunk(i, {}, e.finish)
                        continue
                    entries = e.logprobs if isinstance(e, Text) and self.logprobs else None
                    delta = _delta(e)
                    if delta is not None and (
                        delta.get("content") or entries or "content" not in delta
                    ):
                        yield self.chunk(i, delta, None, entries)
            if self.include_usage:
                usage = _usage(_total(usages, len(usages)))
                yield sse({"id": self.cid, "object": "chat.completion.chunk",
                           "created": self.created, "model": self.model, "choices": [],
                           "usage": usage})  # fmt: skip
        except MullamaError as exc:
            yield sse_error(exc)
        yield SSE_DONE


class _CompletionOut:
    """A text completion's chunks. ``echo``: each choice's prompt text, sent ahead of its
    first text."""

    def __init__(
        self, cid: str, created: int, req: CompletionRequest, echo: list[str] | None
    ) -> None:
        self.base = {"id": cid, "object": "text_completion", "created": created,
                     "model": req.model}  # fmt: skip
        self.req = req
        self.prefix = echo or [""] * (len(req.prompts()) * req.n)
        self.offsets = [CompletionLogprobs() for _ in self.prefix]
        self.include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(self, i: int, text: str, entries: Any, finish: str | None) -> bytes:
        text, self.prefix[i] = self.prefix[i] + text, ""
        lp = self.offsets[i].add(entries or []) if self.req.logprobs is not None else None
        return sse({**self.base, "choices": [{"index": i, "text": text, "logprobs": lp,
                                              "finish_reason": finish}]})  # fmt: skip

    async def stream(self, started: list[Started]) -> AsyncIterator[bytes]:
        """The last piece of a choice's text goes with its finish reason, in one chunk."""
        usages: list[Usage] = [Usage(0, 0, 0) for _ in started]
        last: dict[int, Text] = {}
        logprobs = self.req.logprobs is not None
        try:
            async with aclosing(merged_events(started)) as events:
                async for i, e in events:
                    if isinstance(e, Finished):
                        usages[i] = e.usage
                        piece = last.pop(i, Text(""))
                        yield self.chunk(i, piece.text, piece.logprobs, e.reason)
                    elif isinstance(e, Text) and e.last:
                        last[i] = e
                    elif isinstance(e, Text):
                        if e.text or (logprobs and e.logprobs) or self.prefix[i]:
                            yield self.chunk(i, e.text, e.logprobs, None)
            if self.include_usage:
                usage = _usage(_total(usages, self.req.n))
                yield sse({**self.base, "choices": [], "usage": usage})
        except MullamaError as exc:
            yield sse_error(exc)
        yield SSE_DONE
