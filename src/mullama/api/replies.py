"""A chat generation read as a reply, for the APIs that shape replies their own way (the
Responses API, Anthropic's Messages API): whole (its text and tool calls), or as events
(text pieces, call starts, argument pieces, call ends, then how it finished). Both come
from the same reading of the model's text as chat completions use (api/tools.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..engine.protocol import ChunkStream
from .tools import CallArgs, CallDone, CallReader, CallStart, Content, ToolPlan


@dataclass
class Started:
    """One chat generation, accepted by the engine (errors surfaced before any byte)."""

    plan: ToolPlan
    prompt_tokens: int
    gen: ChunkStream


@dataclass
class Finished:
    """How a reply ended: ``finish`` "stop", "length" or "tool_calls", the stop sequence
    that ended it (None when the model ended it), and the tokens generated."""

    finish: str | None
    stop: str | None
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens found in the KV cache
    prompt_tokens: int = 0  # when the engine told them at the end (a remote engine)


@dataclass
class WholeReply:
    text: str
    calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-shaped calls
    end: Finished = field(default_factory=lambda: Finished(None, None, 0, 0))


Event = Content | CallStart | CallArgs | CallDone | Finished


async def events(started: Started) -> AsyncIterator[Event]:
    """The reply as it is written; ``Finished`` comes last. Closing this closes the
    generation (the engine frees the sequence)."""
    plan, gen = started.plan, started.gen
    reader = CallReader(plan) if plan.active else None
    finish, stop, tokens, cached, prompt = None, None, 0, 0, 0
    try:
        async for c in gen:
            tokens, cached = c.completion_tokens, c.cached_tokens
            prompt = c.prompt_tokens or prompt
            final = c.finish_reason is not None
            if reader is None:
                if c.text:
                    yield Content(c.text)
            else:
                for e in reader.push(c.text, final):
                    yield e
            if final:
                finish, stop = c.finish_reason, c.stop
    finally:
        await gen.aclose()
    if reader is not None:
        finish = reader.finish(finish)
    yield Finished(finish, stop, tokens, cached, prompt)


async def whole(started: Started) -> WholeReply:
    """The whole reply: its text outside calls and its calls (none when it was cut off
    inside one: then all of it is text)."""
    parts: list[str] = []
    finish, stop, tokens, cached, prompt = None, None, 0, 0, 0
    try:
        async for c in started.gen:
            parts.append(c.text)
            tokens, cached = c.completion_tokens, c.cached_tokens
            prompt = c.prompt_tokens or prompt
            if c.finish_reason is not None:
                finish, stop = c.finish_reason, c.stop
    finally:
        await started.gen.aclose()
    reply = started.plan.read("".join(parts), finish)
    return WholeReply(
        reply.content,
        reply.calls,
        Finished(reply.finish(finish), stop, tokens, cached, prompt),
    )
