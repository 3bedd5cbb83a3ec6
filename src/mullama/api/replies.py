"""The one reader of a generation: a ``ChunkStream`` (engine/protocol.py) turned into typed
reply events that each API writes in its own wire shape, whole or streamed.

The events are text pieces (``Text``, with the logprob entries of their tokens), the
model's thinking apart from its text (``Reasoning``, for a model whose template has a
thinking format: api/thinking.py), and for a request with tools the calls read out of
the text as it is written (api/callreader.py: ``CallStart``, ``CallArgs``, ``CallDone``),
then ``Finished``: how the reply ended and its
``Usage``, always filled. The local engine tells the prompt's token count when it accepts
the request (the first chunk), a remote engine only with its last chunk: that is settled
here, once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from ..engine.protocol import ChunkStream
from .callreader import CallArgs, CallDone, CallReader, CallStart
from .streaming import aiter_merge
from .tools import ToolPlan


@dataclass
class Usage:
    """The tokens of one generation: the prompt's, those of them found in the KV cache,
    and those generated (``reasoning``: those of them that were thinking)."""

    prompt: int
    cached: int
    completion: int
    reasoning: int = 0


@dataclass
class Text:
    """A piece of the reply's text. ``logprobs``: the entries of its tokens (a call's
    tokens have none); ``completion``: the tokens generated so far; ``last``: the piece
    came with the engine's last chunk (the ``Finished`` event follows)."""

    text: str
    logprobs: list[Any] | None = None
    completion: int = 0
    last: bool = False


@dataclass
class Reasoning:
    """A piece of the model's thinking (before its answer; never read for calls).
    ``completion``: the tokens generated so far."""

    text: str
    completion: int = 0


@dataclass
class Finished:
    """How a reply ended. ``reason``: the engine's ("stop" or "length"); ``finish``: the
    reply's ("tool_calls" when it holds calls read whole); ``stop``: the stop sequence
    that ended it (None when the model did); ``logprobs``: all the entries of the reply;
    ``first_token_ns``: when its first token came (``perf_counter_ns``; None: none came);
    ``call_text``: a stream's text from the first call's marker on, for the APIs that
    show a call cut off before its end as text."""

    reason: str | None
    finish: str | None
    stop: str | None
    usage: Usage
    logprobs: list[Any] = field(default_factory=list)
    first_token_ns: int | None = None
    call_text: str = ""


Event = Reasoning | Text | CallStart | CallArgs | CallDone | Finished


@dataclass
class Started:
    """One generation, accepted by the engine (errors surfaced before any byte of the
    response). ``prompt_tokens``: the count the engine told on accepting it (0 for a
    remote engine, which tells it at the end: see ``Finished.usage``)."""

    plan: ToolPlan
    prompt_tokens: int
    gen: ChunkStream

    async def events(self, whole: bool = False) -> AsyncIterator[Event]:
        """The reply as it is written; ``Finished`` comes last. With ``whole``, the calls
        are read once the reply is over (from its whole text, as ``ToolPlan.read``: a
        call cut off by max_tokens is text then) and all its text comes in one piece.
        Closing this closes the generation (the engine frees the sequence)."""
        plan, gen = self.plan, self.gen
        reader = CallReader(plan) if plan.active and not whole else None
        usage = Usage(self.prompt_tokens, 0, 0)
        parts: list[str] = []
        thought: list[str] = []  # the whole reply's thinking
        entries: list[Any] = []  # all of them
        held: list[Any] = []  # a stream's entries not yet sent with text
        reason = stop = None
        first: int | None = None
        try:
            async for c in gen:
                usage.prompt = c.prompt_tokens or usage.prompt  # a remote engine's come last
                usage.cached, usage.completion = c.cached_tokens, c.completion_tokens
                usage.reasoning = c.reasoning_tokens or usage.reasoning
                last = c.finish_reason is not None
                if first is None and (c.text or c.completion_tokens):
                    first = time.perf_counter_ns()
                if c.logprobs:
                    entries += c.logprobs
                if last:
                    reason, stop = c.finish_reason, c.stop
                if whole:
                    parts.append(c.text)
                    thought.append(c.reasoning)
                    continue
                if c.reasoning:
                    yield Reasoning(c.reasoning, c.completion_tokens)
                if reader is None and not c.text and c.reasoning and not last:
                    continue  # a thinking chunk: no empty text event after it
                elif reader is None:  # every chunk: each API has its rule for empty ones
                    yield Text(c.text, c.logprobs, c.completion_tokens, last)
                else:
                    held += c.logprobs or []
                    for e in reader.push(c.text, last):
                        if isinstance(e, CallStart):
                            held = []  # a call's tokens carry no logprob entries
                        elif not isinstance(e, CallArgs | CallDone):
                            e, held = Text(e.text, held or None, c.completion_tokens, last), []
                        yield e
        finally:
            await gen.aclose()
        finish, call_text = reason, ""
        if reader is not None:
            finish = reader.finish(reason)
            call_text = reader.text[reader.mark :] if reader.calls else ""
        elif whole:
            read, finish = _read_whole(plan, "".join(thought), "".join(parts), entries, usage,
                                       reason)  # fmt: skip
            for e in read:
                yield e
        yield Finished(reason, finish, stop, usage, entries, first, call_text)


def _read_whole(
    plan: ToolPlan, thought: str, text: str, entries: list[Any], usage: Usage, reason: str | None
) -> tuple[list[Event], str | None]:
    """A whole reply's events before ``Finished`` (its thinking, its text, its calls read
    from the text) and how it ended."""
    out: list[Event] = [Reasoning(thought, usage.completion)] if thought else []
    reply = plan.read(text, reason)
    out.append(Text(reply.content, entries, usage.completion, True))
    for k, call in enumerate(reply.calls):
        fn = call["function"]
        out += [CallStart(k, call["id"], fn["name"]), CallArgs(k, fn["arguments"]), CallDone(k)]
    return out, reply.finish(reason)


@dataclass
class Calls:
    """The calls of a reply as its events tell them, in OpenAI's shape."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def add(self, e: Event) -> None:
        if isinstance(e, CallStart):
            self.calls.append({"id": e.id, "type": "function",
                               "function": {"name": e.name, "arguments": ""}})  # fmt: skip
        elif isinstance(e, CallArgs):
            self.calls[e.index]["function"]["arguments"] += e.piece


@dataclass
class WholeReply:
    """A whole reply: its text outside calls, its calls (OpenAI-shaped; none when it was
    cut off inside one: then all of it is text), how it ended, and its thinking ("" when
    there was none)."""

    text: str
    calls: list[dict[str, Any]]
    end: Finished
    reasoning: str = ""


async def whole(started: Started) -> WholeReply:
    return (await wholes([started]))[0]


async def wholes(started: list[Started]) -> list[WholeReply]:
    """Several generations read together (the choices of one request), each whole."""
    texts: list[list[str]] = [[] for _ in started]
    thoughts = [""] * len(started)
    calls = [Calls() for _ in started]
    ends: list[Finished | None] = [None] * len(started)
    readers = [s.events(whole=True) for s in started]
    async with aclosing(aiter_merge(readers)) as merged:
        async for i, e in merged:
            if isinstance(e, Text):
                texts[i].append(e.text)
            elif isinstance(e, Reasoning):
                thoughts[i] += e.text
            elif isinstance(e, Finished):
                ends[i] = e
            else:
                calls[i].add(e)
    out = []
    for text, found, end, thought in zip(texts, calls, ends, thoughts, strict=True):
        assert end is not None  # a reader that ends without Finished has raised
        out.append(WholeReply("".join(text), found.calls, end, thought))
    return out


def merged_events(started: list[Started]) -> AsyncIterator[tuple[int, Event]]:
    """The streamed events of several generations (the choices of one request), each
    tagged with its index, as they come."""
    return aiter_merge([s.events() for s in started])
