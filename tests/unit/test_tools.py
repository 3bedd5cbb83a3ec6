"""Tool calls read out of replies, whole and streamed, in each syntax family: the generic
format (replies SmolLM2 wrote under the call constraint, recorded from the daemon),
Hermes/Qwen, Llama 3 and Mistral (the syntaxes read off their real templates), each
stream cut at every character."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from mullama.api.callreader import CallArgs, CallReader, CallStart, Content
from mullama.api.tools import ToolPlan, ToolSpec
from mullama.api.toolsyntax import GENERIC_TEMPLATE, template_tools

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
TEMPLATES = Path(__file__).parent / "templates"


def _template(name: str):
    return template_tools((TEMPLATES / name).read_text())


FAMILIES = {
    "hermes": (
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
        '\n</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
        "Let me check.",
    ),
    "llama3": (
        "meta-llama-Llama-3.2-3B-Instruct.jinja",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
    ),
    "mistral": (
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcdefgh0"}, '
        '{"name": "add", "arguments": {"a": 1, "b": 2}, "id": "abcdefgh1"}]',
        "",
    ),
}


def _streamed(plan: ToolPlan, reply: str, step: int) -> tuple[str, list[str], dict[int, str]]:
    reader, events = CallReader(plan), []
    for start in range(0, len(reply), step):
        events += reader.push(reply[start : start + step], final=start + step >= len(reply))
    content = "".join(e.text for e in events if isinstance(e, Content))
    names = [e.name for e in events if isinstance(e, CallStart)]
    args: dict[int, str] = {}
    for e in events:
        if isinstance(e, CallArgs):
            args[e.index] = args.get(e.index, "") + e.piece
    return content, names, args


def _check_stream_matches_whole(plan: ToolPlan, reply: str) -> list[dict]:
    whole = plan.read(reply, "stop")
    assert whole.calls
    for step in range(1, 12):
        content, names, args = _streamed(plan, reply, step)
        assert content.strip() == whole.content
        assert names == [c["function"]["name"] for c in whole.calls]
        assert [args[i] for i in range(len(whole.calls))] == [
            c["function"]["arguments"] for c in whole.calls
        ]
    assert plan.read(reply, "length").calls == []  # cut off by max_tokens: never a call
    return whole.calls


@pytest.mark.parametrize("reply", RECORDED)
def test_a_stream_cut_anywhere_adds_up_to_the_whole_reading(reply):
    plan = ToolPlan(TOOLS, "required", True)
    whole = _check_stream_matches_whole(plan, reply)
    for call, raw in zip(whole, orjson.loads(reply)["tool_calls"], strict=True):
        assert orjson.loads(call["function"]["arguments"]) == raw["parameters"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_is_detected_and_read_whole_and_streamed(family):
    source, reply, content = FAMILIES[family]
    template = _template(source)
    assert template.native and template.family == family
    plan = ToolPlan(TOOLS, "auto", True, template)
    calls = _check_stream_matches_whole(plan, reply)
    assert plan.read(reply, "stop").content == content
    assert calls[0]["function"]["arguments"] == '{"city": "Paris"}'
    assert len({c["id"] for c in calls}) == len(calls)


def test_a_template_without_tools_gets_the_generic_format():
    template = template_tools("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert not template.native and template.syntax == GENERIC_TEMPLATE.syntax
    plan = ToolPlan(TOOLS, "auto", True, template)
    assert plan.instruction() is not None and plan.tools_for_template() is None


def test_arguments_are_the_models_own_text():
    reply = RECORDED[2]
    call = ToolPlan(TOOLS, "required", True).read(reply, "stop").calls[0]
    assert call["function"]["arguments"] == '{"city": "Par}is \\"x\\"", "unit": "c"}'


def test_one_call_only_when_parallel_calls_are_off():
    plan = ToolPlan(TOOLS, "required", False)
    assert len(plan.read(RECORDED[0], "stop").calls) == 1
    assert _streamed(plan, RECORDED[0], 1)[1] == ["get_weather"]


@pytest.mark.parametrize(
    "reply",
    ["Hello there", '{"answer": 42}', '{"tool_calls": [{"name": "rm_rf", "parameters": {}}]}',
     '{"tool_calls": [{"name": "add", "parameters": {"a": 1'],
)  # fmt: skip
def test_text_unknown_tools_and_cut_calls_are_no_calls(reply):
    plan = ToolPlan(TOOLS, "auto", True)
    assert plan.read(reply, "stop").calls == []
    assert plan.read(reply, "stop").content == reply  # all of it, as text
    if "rm_rf" in reply or reply.startswith("Hello") or "answer" in reply:
        content, names, _ = _streamed(plan, reply, 1)
        assert names == [] and content == reply


def test_text_that_only_looks_like_a_marker_start_is_released():
    plan = ToolPlan(TOOLS, "auto", True, _template(FAMILIES["hermes"][0]))
    content, names, _ = _streamed(plan, "a < b and <tool is not a call", 1)
    assert names == [] and content == "a < b and <tool is not a call"


def test_none_reads_no_calls_and_shows_no_tools():
    plan = ToolPlan(TOOLS, "none", True)
    assert (
        plan.read(RECORDED[1], "stop").calls == []
        and plan.instruction() is None
        and plan.constraint() is None
    )


def test_a_template_without_a_system_role_gets_the_instruction_in_the_user_turn():
    from mullama.engine.chat_template import ChatTemplate

    source = (TEMPLATES / "google-gemma-2-2b-it.jinja").read_text()
    template = template_tools(source)
    assert not template.system and not template.native  # Gemma 2 raises on "system"
    plan = ToolPlan(TOOLS, "auto", True, template)
    messages = plan.with_instruction([{"role": "user", "content": "What is 2 + 3?"}])
    assert [m["role"] for m in messages] == ["user"]
    rendered = ChatTemplate(source).render(messages)
    assert "You can call tools" in rendered and rendered.index("add") < rendered.index("2 + 3")


def test_a_name_that_is_no_json_string_is_text_not_an_error():
    plan = ToolPlan(TOOLS, "auto", True)
    reply = '{"tool_calls": [{"name": "get\\_weather", "parameters": {}}]}'
    assert plan.read(reply, "stop").content == reply
    content, names, _ = _streamed(plan, reply, 1)
    assert names == [] and content == reply
