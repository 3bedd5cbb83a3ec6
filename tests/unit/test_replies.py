"""The one reader of a generation (api/replies.py), on chunk streams as the engines send
them: the local engine tells the prompt's tokens on accepting the request, a remote one
only with its last chunk; with tools, the calls are read out of the text, streamed or
whole; closing the reader closes the generation."""

from __future__ import annotations

import asyncio

from mullama.api.callreader import CallArgs, CallDone, CallStart
from mullama.api.replies import (
    Finished,
    Reasoning,
    Started,
    Text,
    Usage,
    merged_events,
    whole,
    wholes,
)
from mullama.api.tools import ToolSpec, plan_tools
from mullama.engine.protocol import Chunk

TOOLS = [ToolSpec.model_validate({"type": "function", "function": {"name": "get_weather"}})]
CALL = '{"tool_calls": [{"name": "get_weather", "parameters": {"city": "Paris"}}]}'


class FakeGeneration:
    """A generation's chunks after its acceptance; remembers whether it was closed."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        self.closed = False

    async def gen(self):  # type: ignore[no-untyped-def]
        try:
            for c in self.chunks:
                await asyncio.sleep(0)
                yield c
        finally:
            self.closed = True


def _started(
    chunks: list[Chunk], prompt: int, tools: bool = False
) -> tuple[Started, FakeGeneration]:
    plan = plan_tools(TOOLS if tools else None, None, None, None)
    fake = FakeGeneration(chunks)
    return Started(plan, prompt, fake.gen()), fake


def _pieces(text: str, prompt: int, cached: int, remote: bool = False) -> list[Chunk]:
    """``text`` in pieces of 5 characters, one token each; a remote engine tells its
    counts on the last chunk only."""
    pieces = [text[i : i + 5] for i in range(0, len(text), 5)]
    out = []
    for k, piece in enumerate(pieces, 1):
        last = k == len(pieces)
        told = last or not remote
        out.append(Chunk(piece, k, prompt if told else 0, "stop" if last else None,
                         cached_tokens=cached if told else 0))  # fmt: skip
    return out


def _events(started: Started, whole: bool = False) -> list:
    async def run() -> list:
        return [e async for e in started.events(whole)]

    return asyncio.run(run())


def test_local_usage_comes_from_the_acceptance_and_the_chunks():
    started, fake = _started(_pieces("Hello there.", 9, 4), 9)
    events = _events(started)
    assert "".join(e.text for e in events if isinstance(e, Text)) == "Hello there."
    end = events[-1]
    assert isinstance(end, Finished)
    assert end.usage == Usage(prompt=9, cached=4, completion=3)
    assert (end.reason, end.finish, end.stop) == ("stop", "stop", None)
    assert end.first_token_ns is not None
    assert fake.closed


def test_remote_usage_comes_with_the_last_chunk():
    started, _ = _started(_pieces("Hello there.", 11, 2, remote=True), 0)
    assert _events(started)[-1].usage == Usage(prompt=11, cached=2, completion=3)
    started, _ = _started(_pieces("Hello there.", 11, 2, remote=True), 0)
    assert asyncio.run(whole(started)).end.usage == Usage(prompt=11, cached=2, completion=3)


def test_no_chunk_tells_the_prompt_keeps_the_acceptance_count():
    chunks = [Chunk("Hi", 1, 0, "length")]  # a replay from the response cache
    started, _ = _started(chunks, 6)
    end = _events(started)[-1]
    assert end.usage == Usage(prompt=6, cached=0, completion=1)
    assert end.reason == end.finish == "length"


def test_a_streamed_call_is_read_as_it_is_written():
    started, _ = _started(_pieces(CALL, 20, 0), 20, tools=True)
    events = _events(started)
    assert not [e for e in events if isinstance(e, Text)]
    start = events[0]
    assert isinstance(start, CallStart) and start.name == "get_weather"
    args = "".join(e.piece for e in events if isinstance(e, CallArgs))
    assert args == '{"city": "Paris"}'
    assert isinstance(events[-2], CallDone)
    assert events[-1].finish == "tool_calls" and events[-1].reason == "stop"


def test_a_whole_reply_reads_its_calls_at_the_end():
    started, _ = _started(_pieces(CALL, 20, 0), 20, tools=True)
    reply = asyncio.run(whole(started))
    assert reply.text == ""
    assert [c["function"] for c in reply.calls] == [
        {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    ]
    assert reply.end.finish == "tool_calls"


def test_a_call_cut_by_max_tokens_is_text_when_whole():
    cut = CALL[:60]  # inside the arguments
    chunks = [Chunk(cut, 6, 20, "length")]
    started, _ = _started(chunks, 20, tools=True)
    reply = asyncio.run(whole(started))
    assert (reply.text, reply.calls, reply.end.finish) == (cut, [], "length")
    started, _ = _started(chunks, 20, tools=True)
    end = _events(started)[-1]
    assert end.finish == "length" and end.call_text == cut


def test_logprob_entries_go_with_text_and_all_of_them_with_the_end():
    entries = [["Hi", -0.1, []], ["!", -0.2, []]]
    chunks = [Chunk("Hi", 1, 3, logprobs=entries[:1]),
              Chunk("!", 2, 3, "stop", logprobs=entries[1:])]  # fmt: skip
    started, _ = _started(chunks, 3)
    events = _events(started)
    assert [e.logprobs for e in events if isinstance(e, Text)] == [entries[:1], entries[1:]]
    assert [e.last for e in events if isinstance(e, Text)] == [False, True]
    assert events[-1].logprobs == entries


def test_closing_the_reader_closes_the_generation():
    started, fake = _started(_pieces("a long enough reply", 5, 0), 5)

    async def first_then_close() -> None:
        events = started.events()
        await events.__anext__()
        await events.aclose()

    asyncio.run(first_then_close())
    assert fake.closed


def test_choices_are_read_together():
    a, _ = _started(_pieces("first choice", 4, 1), 4)
    b, _ = _started(_pieces("second one", 4, 1), 4)
    replies = asyncio.run(wholes([a, b]))
    assert [r.text for r in replies] == ["first choice", "second one"]
    assert [r.end.usage.completion for r in replies] == [3, 2]

    async def merged() -> dict[int, str]:
        a, _ = _started(_pieces("first choice", 4, 1), 4)
        b, _ = _started(_pieces("second one", 4, 1), 4)
        texts: dict[int, str] = {0: "", 1: ""}
        async for i, e in merged_events([a, b]):
            if isinstance(e, Text):
                texts[i] += e.text
        return texts

    assert asyncio.run(merged()) == {0: "first choice", 1: "second one"}


def _thought(call_inside: bool = False) -> list[Chunk]:
    """A reply that thinks (two chunks, the second writing a call inside the thinking),
    then answers."""
    inside = CALL if call_inside else "it is sunny"
    return [
        Chunk("", 4, 0, reasoning="Let me see: ", reasoning_tokens=4),
        Chunk("", 9, 0, reasoning=inside, reasoning_tokens=9),
        Chunk("Paris.", 12, 0, "stop", reasoning_tokens=9),
    ]


def test_thinking_comes_apart_before_the_text_and_is_counted():
    started, _ = _started(_thought(), 10)
    events = _events(started)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Reasoning", "Reasoning", "Text", "Finished"]
    assert "".join(e.text for e in events if isinstance(e, Reasoning)) == "Let me see: it is sunny"
    assert events[-1].usage == Usage(10, 0, 12, 9)
    reply = asyncio.run(whole(_started(_thought(), 10)[0]))
    assert (reply.reasoning, reply.text) == ("Let me see: it is sunny", "Paris.")


def test_a_call_written_inside_the_thinking_is_no_call():
    for as_whole in (False, True):
        started, _ = _started(_thought(call_inside=True), 10, tools=True)
        events = _events(started, as_whole)
        assert not any(isinstance(e, CallStart) for e in events)
        assert events[-1].finish == "stop"
        assert CALL in "".join(e.text for e in events if isinstance(e, Reasoning))
