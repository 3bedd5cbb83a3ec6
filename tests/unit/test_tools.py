"""The generic tool-call format, read whole and streamed, on replies SmolLM2 wrote under
the call constraint (recorded from the daemon), cut at every character."""

from __future__ import annotations

import orjson
import pytest

from mullama.api.tools import CallStream, ToolPlan, ToolSpec

TOOLS = [
    ToolSpec.model_validate({"type": "function", "function": {"name": "get_weather",
                             "parameters": {"type": "object"}}}),
    ToolSpec.model_validate({"type": "function", "function": {"name": "add"}}),
]  # fmt: skip
RECORDED = [
    '{ "tool_calls": [{"name":"get_weather","parameters":{"city":"Paris","unit":"c"}},'
    '{"name":"get_weather","parameters":{"city":"Paris","unit":"f"}}]}',
    '{ "tool_calls": [{"name":"add","parameters":{"a":10,"b":20}}]}',
    # Whitespace everywhere, a brace inside a string, escapes in the name's neighbourhood.
    '{\n  "tool_calls" : [ { "name" : "get_weather" , "parameters" : {"city": "Par}is \\"x\\"",'
    ' "unit": "c"} } ]\n}',
]


def _streamed(plan: ToolPlan, reply: str, step: int) -> tuple[list[str], dict[int, str]]:
    stream, deltas = CallStream(plan), []
    for end in range(step, len(reply) + step, step):
        deltas += stream.feed(reply[:end])
    names = [d["function"]["name"] for d in deltas if "id" in d]
    args: dict[int, str] = {}
    for d in deltas:
        if "id" in d:
            assert d["function"]["arguments"] == ""  # announced first, arguments after
        else:
            assert "name" not in d["function"]  # never a name twice
        args[d["index"]] = args.get(d["index"], "") + d["function"]["arguments"]
    return names, args


@pytest.mark.parametrize("reply", RECORDED)
def test_a_stream_cut_anywhere_adds_up_to_the_whole_reading(reply):
    plan = ToolPlan(TOOLS, "required", True)
    whole = plan.calls(reply, "stop")
    assert whole is not None
    for step in range(1, 12):
        names, args = _streamed(plan, reply, step)
        assert names == [c["function"]["name"] for c in whole]
        assert [args[i] for i in range(len(whole))] == [c["function"]["arguments"] for c in whole]
    assert plan.calls(reply, "length") is None  # cut off by max_tokens: never a call
    for call, raw in zip(whole, orjson.loads(reply)["tool_calls"], strict=True):
        assert orjson.loads(call["function"]["arguments"]) == raw["parameters"]


def test_arguments_are_the_models_own_text():
    reply = RECORDED[2]
    call = ToolPlan(TOOLS, "required", True).calls(reply, "stop")[0]
    assert call["function"]["arguments"] == '{"city": "Par}is \\"x\\"", "unit": "c"}'


def test_one_call_only_when_parallel_calls_are_off():
    plan = ToolPlan(TOOLS, "required", False)
    assert len(plan.calls(RECORDED[0], "stop")) == 1
    assert _streamed(plan, RECORDED[0], 1)[0] == ["get_weather"]


@pytest.mark.parametrize(
    "reply",
    ["Hello there", '{"answer": 42}', '{"tool_calls": [{"name": "rm_rf", "parameters": {}}]}',
     '{"tool_calls": [{"name": "add", "parameters": {"a": 1'],
)  # fmt: skip
def test_text_unknown_tools_and_cut_calls_are_no_calls(reply):
    plan = ToolPlan(TOOLS, "auto", True)
    assert plan.calls(reply, "stop") is None
    if "rm_rf" in reply or reply.startswith("Hello") or "answer" in reply:
        assert _streamed(plan, reply, 1)[0] == []


def test_none_reads_no_calls_and_shows_no_tools():
    plan = ToolPlan(TOOLS, "none", True)
    assert (
        plan.calls(RECORDED[1], "stop") is None
        and plan.instruction() is None
        and plan.constraint() is None
    )
