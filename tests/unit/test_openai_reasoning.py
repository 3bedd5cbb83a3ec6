"""Reasoning on the OpenAI-shaped APIs (api/openai/): what a request asks of the model's
thinking (``reasoning_effort``, ``chat_template_kwargs``, Responses' ``reasoning``),
earlier turns' thinking sent back, and the thinking a reply carries, whole and streamed,
as chat messages and deltas and as Responses' reasoning items. The replies come from fake
generations (the engine's chunks as it sends them: thinking first, then the answer);
tests/e2e/test_reasoning_openai.py runs the real daemon and model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest

from mullama import requestctx
from mullama.api.body import validate
from mullama.api.chat import openai_chat
from mullama.api.openai.responses import (
    ResponsesRequest,
    ResponseStore,
    _base,
    _ResponseOut,
    input_messages,
)
from mullama.api.openai.responsetools import ResponseTools
from mullama.api.openai.schemas import ChatCompletionRequest
from mullama.api.openai.service import _ChatOut, _message
from mullama.api.replies import Started, wholes
from mullama.api.thinking import Think
from mullama.api.tools import plan_tools
from mullama.engine.protocol import Chunk
from mullama.errors import InvalidParameter

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
THOUGHT, ANSWER = "Let me see. France.", "Paris."


@pytest.fixture(autouse=True)
def ctx() -> Iterator[requestctx.RequestContext]:
    c = requestctx.RequestContext()
    token = requestctx.current.set(c)
    yield c
    requestctx.current.reset(token)


async def _gen(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    for c in chunks:
        await asyncio.sleep(0)
        yield c


def _thinking_reply(thought: str = THOUGHT, answer: str = ANSWER) -> Started:
    """A reply that thinks (one token per 4 characters), then answers: the engine's chunks."""
    chunks, n, r = [], 0, 0
    for k in range(0, len(thought), 4):
        n, r = n + 1, r + 1
        chunks.append(Chunk("", n, 7, reasoning=thought[k : k + 4], reasoning_tokens=r))
    n += 1  # the closing marker: a thinking token with no text
    chunks.append(Chunk("", n, 7, reasoning_tokens=r + 1))
    for k in range(0, len(answer), 4):
        n += 1
        last = k + 4 >= len(answer)
        chunks.append(Chunk(answer[k : k + 4], n, 7, "stop" if last else None,
                            reasoning_tokens=r + 1))  # fmt: skip
    return Started(plan_tools(None, None, None, None), 7, _gen(chunks))


def _plain_reply() -> Started:
    chunks = [Chunk("Par", 1, 7), Chunk("is.", 2, 7, "stop")]
    return Started(plan_tools(None, None, None, None), 7, _gen(chunks))


def _sse(stream: AsyncIterator[bytes]) -> list[dict]:
    async def run() -> list[bytes]:
        return [b async for b in stream]

    out = []
    for event in b"".join(asyncio.run(run())).split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


# ---- what a chat request asks ------------------------------------------------------


@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high", "xhigh"])
def test_reasoning_effort_is_acted_on_not_reported(ctx, effort):
    req = validate(ChatCompletionRequest, {**CHAT, "reasoning_effort": effort})
    assert openai_chat(req).think == Think(effort=effort, asked_by="reasoning_effort")
    assert not ctx.ignored


def test_reasoning_effort_none_turns_thinking_off_and_max_is_the_most():
    req = validate(ChatCompletionRequest, {**CHAT, "reasoning_effort": "none"})
    assert openai_chat(req).think == Think(on=False, asked_by="reasoning_effort")
    req = validate(ChatCompletionRequest, {**CHAT, "reasoning_effort": "max"})
    assert openai_chat(req).think == Think(effort="xhigh", asked_by="reasoning_effort")
    assert openai_chat(validate(ChatCompletionRequest, CHAT)).think == Think()


@pytest.mark.parametrize("effort", ["maximal", "", 3, True])
def test_another_effort_is_refused_by_name(effort):
    with pytest.raises(InvalidParameter) as err:
        validate(ChatCompletionRequest, {**CHAT, "reasoning_effort": effort})
    assert err.value.param == "reasoning_effort" and err.value.status == 400


def test_chat_template_kwargs_are_the_template_s_variables(ctx):
    kwargs = {"enable_thinking": False, "custom": [1, 2]}
    req = validate(ChatCompletionRequest, {**CHAT, "chat_template_kwargs": kwargs})
    assert openai_chat(req).template_vars == kwargs and not ctx.ignored
    with pytest.raises(InvalidParameter) as err:
        validate(ChatCompletionRequest, {**CHAT, "chat_template_kwargs": "enable_thinking"})
    assert err.value.param == "chat_template_kwargs"


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_an_assistant_turn_s_thinking_goes_to_the_template_as_reasoning_content(ctx, key):
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Paris.", key: THOUGHT},
                {"role": "user", "content": "and Italy?"}]  # fmt: skip
    req = validate(ChatCompletionRequest, {**CHAT, "messages": messages})
    turns = openai_chat(req).turns(False)
    assert turns[1] == {"role": "assistant", "content": "Paris.", "reasoning_content": THOUGHT}
    assert "reasoning_content" not in turns[0] and not ctx.ignored


# ---- chat answers ----------------------------------------------------------------------


def test_a_whole_answer_carries_its_thinking_under_both_names():
    (reply,) = asyncio.run(wholes([_thinking_reply()]))
    message = _message(reply)
    assert message["content"] == ANSWER
    assert message["reasoning_content"] == message["reasoning"] == THOUGHT
    assert reply.end.usage.reasoning == 6  # 5 pieces and the closing marker


def test_an_answer_without_thinking_has_no_reasoning_keys():
    (reply,) = asyncio.run(wholes([_plain_reply()]))
    assert _message(reply) == {"role": "assistant", "content": "Paris."}


def _chat_stream(started: Started, **extra) -> list[dict]:
    req = validate(ChatCompletionRequest, {**CHAT, "stream": True, **extra})
    return _sse(_ChatOut("c", 0, req).stream([started]))


def test_a_stream_sends_the_thinking_first_under_both_names_and_adds_up():
    chunks = _chat_stream(_thinking_reply())
    deltas = [c["choices"][0]["delta"] for c in chunks]
    thinking = [d for d in deltas if "reasoning_content" in d]
    assert all(d["reasoning"] == d["reasoning_content"] and "content" not in d for d in thinking)
    assert "".join(d["reasoning_content"] for d in thinking) == THOUGHT
    assert "".join(d.get("content", "") for d in deltas) == ANSWER
    kinds = ["thinking" if "reasoning_content" in d else "answer"
             for d in deltas[1:] if d.get("content") or "reasoning_content" in d]  # fmt: skip
    assert kinds == sorted(kinds, reverse=True)  # all the thinking, then the answer


def test_usage_counts_the_reasoning_tokens_of_a_reply_that_thought():
    opts = {"stream_options": {"include_usage": True}}
    usage = _chat_stream(_thinking_reply(), **opts)[-1]["usage"]
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 6}
    assert usage["completion_tokens"] == 8  # and 2 of the answer
    usage = _chat_stream(_plain_reply(), **opts)[-1]["usage"]
    assert "completion_tokens_details" not in usage  # as before, for a model that never thinks


# ---- Responses ---------------------------------------------------------------------------

RESP = {"model": "m", "input": "hi"}


def test_responses_reasoning_effort_is_chat_s_and_the_response_echoes_it(ctx):
    body = validate(ResponsesRequest, {**RESP, "reasoning": {"effort": "low", "summary": "auto"}})
    chat = body.to_chat(input_messages(body.input))
    assert chat.reasoning_effort == "low" and openai_chat(chat).think == Think(
        effort="low", asked_by="reasoning_effort"
    )
    assert _base(body)["reasoning"] == {"effort": "low", "summary": "auto"}
    assert list(ctx.ignored) == ["reasoning.summary"]  # no summary is written
    plain = validate(ResponsesRequest, RESP)
    assert _base(plain)["reasoning"] is None
    assert plain.to_chat(input_messages(plain.input)).reasoning_effort is None
    with pytest.raises(InvalidParameter) as err:
        validate(ResponsesRequest, {**RESP, "reasoning": {"effort": "maximal"}})
    assert err.value.param == "reasoning.effort"


def _reasoning(text: str, key: str = "content") -> dict:
    kind = "reasoning_text" if key == "content" else "summary_text"
    return {"type": "reasoning", "id": "rs_1", "summary": [], key: [{"type": kind, "text": text}]}


def test_reasoning_items_sent_back_are_the_next_assistant_turn_s_reasoning_content():
    said = {"type": "message", "role": "assistant", "content": [{"type": "output_text",
                                                                 "text": "Paris."}]}  # fmt: skip
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    items = [{"role": "user", "content": "hi"}, _reasoning("Hmm."), said, call,
             {"type": "function_call_output", "call_id": "c1", "output": "ok"},
             _reasoning("Done.", "summary"), call, {"role": "user", "content": "and?"}]  # fmt: skip
    messages = input_messages(items)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user"]
    assert messages[1]["reasoning_content"] == "Hmm." and messages[1]["tool_calls"]
    assert messages[3]["reasoning_content"] == "Done."
    # Reasoning before a turn that is not the assistant's, or with no text, goes nowhere.
    lost = input_messages([_reasoning("x"), {"role": "user", "content": "hi"},
                           {"type": "reasoning", "summary": [], "encrypted_content": "e"}, said])  # fmt: skip
    assert all("reasoning_content" not in m for m in lost)


def _response_events(started: Started, store: ResponseStore | None = None) -> list[dict]:
    body = validate(ResponsesRequest, {**RESP, "stream": True})
    out = _ResponseOut(
        store, body, [{"role": "user", "content": "hi"}], ResponseTools.of(None, "hi")
    )
    return _sse(out.stream(started))


def test_a_responses_stream_writes_the_reasoning_item_before_the_message():
    store = ResponseStore()
    events = _response_events(_thinking_reply(), store)
    kinds = [e["type"] for e in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.reasoning_text.delta"]  # fmt: skip
    added = events[2]["item"]
    assert added["type"] == "reasoning" and added["id"].startswith("rs_") and added["summary"] == []
    deltas = [e for e in events if e["type"] == "response.reasoning_text.delta"]
    assert "".join(e["delta"] for e in deltas) == THOUGHT
    assert all(e["output_index"] == 0 and e["item_id"] == added["id"] for e in deltas)
    done = kinds.index("response.reasoning_text.done")
    assert events[done]["text"] == THOUGHT and kinds.index("response.output_text.delta") > done
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["reasoning", "message"]
    sealed = final["output"][0].pop("encrypted_content")
    assert final["output"][0] == {"type": "reasoning", "id": added["id"], "summary": [],
                                  "content": [{"type": "reasoning_text", "text": THOUGHT}],
                                  "status": "completed"}  # fmt: skip
    # Sent back with its encrypted_content alone (as Codex does), its text is read back.
    back = {"type": "reasoning", "id": added["id"], "summary": [], "encrypted_content": sealed}
    said = {"role": "assistant", "content": "Paris."}
    assert input_messages([back, said])[0]["reasoning_content"] == THOUGHT
    assert final["output"][1]["content"][0]["text"] == ANSWER
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 6}
    # A follow-up (previous_response_id) continues with the thinking in the assistant turn.
    _, conversation = store.get(final["id"])
    assert conversation[-1] == {
        "role": "assistant",
        "content": ANSWER,
        "reasoning_content": THOUGHT,
    }


def test_a_responses_stream_cut_off_inside_the_thinking():
    chunks = [Chunk("", 1, 7, reasoning="Hmm", reasoning_tokens=1),
              Chunk("", 2, 7, "length", reasoning=" ok", reasoning_tokens=2)]  # fmt: skip
    started = Started(plan_tools(None, None, None, None), 7, _gen(chunks))
    final = _response_events(started)[-1]
    assert final["type"] == "response.incomplete"
    output = final["response"]["output"]
    assert [(i["type"], i["status"]) for i in output] == [("reasoning", "incomplete"),
                                                          ("message", "incomplete")]  # fmt: skip
    assert output[0]["content"][0]["text"] == "Hmm ok"
