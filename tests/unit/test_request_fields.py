"""The request-field rule (api/fields.py) as the request models apply it, default and
--strict-fields; what is reported (requestctx: the header, metrics: the counter's
bounded labels); Codex's tools (api/openai/responsetools.py) on its recorded first
requests and on the shapes they can take."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mullama import requestctx
from mullama.api.anthropic.schemas import MessagesRequest
from mullama.api.body import validate
from mullama.api.openai.responses import ResponsesRequest, input_messages
from mullama.api.openai.responsetools import ResponseTools, flat_name
from mullama.api.openai.schemas import ChatCompletionRequest
from mullama.errors import InvalidParameter
from mullama.observability.metrics import MAX_UNDECLARED_FIELDS, Metrics, Snapshot

DATA = Path(__file__).resolve().parent.parent / "data" / "agents"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def ctx() -> Iterator[requestctx.RequestContext]:
    c = requestctx.RequestContext()
    token = requestctx.current.set(c)
    yield c
    requestctx.current.reset(token)


@pytest.fixture
def strict(ctx: requestctx.RequestContext) -> requestctx.RequestContext:
    ctx.strict_fields = True
    return ctx


def test_by_default_fields_not_acted_on_are_reported_in_order(ctx):
    validate(ChatCompletionRequest, {**CHAT, "verbosity": "low", "zz": 1, "user": "u",
                                     "store": False, "prediction": None})  # fmt: skip
    # A hint, an unknown field, a no-op; a neutral value (false, null) is not reported.
    assert ctx.ignored == {"verbosity": True, "zz": False, "user": True}
    assert ctx.response_headers() == [(b"mullama-ignored-fields", b"verbosity,zz,user")]


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"zz": 1}, "zz"), ({"verbosity": "low"}, "verbosity"),
     ({"logit_bias": {"1": 2}}, "logit_bias")],
)  # fmt: skip
def test_strict_refuses_unknown_fields_and_hints(strict, extra, param):
    with pytest.raises(InvalidParameter) as err:
        validate(ChatCompletionRequest, {**CHAT, **extra})
    assert err.value.param == param
    validate(ChatCompletionRequest, {**CHAT, "user": "u"})  # a no-op is still accepted
    assert strict.ignored == {"user": True}


def test_what_changes_the_answer_is_refused_by_default_too(ctx):
    with pytest.raises(InvalidParameter) as err:
        validate(ChatCompletionRequest, {**CHAT, "logit_bias": {"1": 2}})
    assert err.value.param == "logit_bias" and "not supported" in err.value.message


def test_an_assistant_message_s_extra_fields_are_never_refused(strict):
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": "x", "annotations": [{"a": 1}]}]  # fmt: skip
    validate(ChatCompletionRequest, {"model": "m", "messages": msgs})
    assert strict.ignored == {"messages[].annotations": False}


def test_names_in_the_header_are_ascii_and_bounded(ctx):
    ctx.ignore("caf\u00e9,x\n")
    for i in range(requestctx.MAX_IGNORED + 5):
        ctx.ignore(f"f{i}")
    ctx.ignore("f0")  # already there: not counted twice
    header = dict(ctx.response_headers())[b"mullama-ignored-fields"].decode("ascii")
    names = header.split(",")
    assert names[0] == "caf%C3%A9%2Cx%0A" and len(names) == requestctx.MAX_IGNORED + 1
    assert names[-1] == "+6 more"


def test_beta_headers_are_reported():
    ctx = requestctx.RequestContext.from_headers([(b"anthropic-beta", b"a,b"),
                                                  (b"openai-beta", b"responses=v1")])  # fmt: skip
    assert list(ctx.ignored) == ["anthropic-beta", "openai-beta"]


def test_client_made_names_get_a_bounded_number_of_series():
    m = Metrics(lambda: Snapshot(0, 0, 0, "x"))
    for i in range(MAX_UNDECLARED_FIELDS + 3):
        m.ignored("openai", {f"made_up_{i}": False, "user": True})
    text = m.render().decode()
    series = [line for line in text.splitlines() if line.startswith("mullama_ignored_fields_total")]
    assert sum("made_up_" in line for line in series) == MAX_UNDECLARED_FIELDS
    assert 'mullama_ignored_fields_total{api="openai",field="(other)"} 3.0' in text
    assert f'field="user"}} {MAX_UNDECLARED_FIELDS + 3}.0' in text


# ---- Codex's tools -------------------------------------------------------------------


def _recorded(name: str) -> dict:
    return json.loads((DATA / name).read_text())["requests"][0]


def _chat(body: dict) -> tuple[ResponsesRequest, ResponseTools, ChatCompletionRequest]:
    req = validate(ResponsesRequest, body)
    tools = ResponseTools.of(req.tools, req.input)
    return req, tools, req.to_chat(input_messages(req.input), tools)


def test_codex_first_request_its_namespace_flattened_and_web_search_left_out(ctx):
    _, tools, chat = _chat(_recorded("codex_first_request.json")["body"])
    names = [t.function.name for t in chat.tools or []]
    assert "exec_command" in names and "multi_agent_v1.spawn_agent" in names
    assert tools.call("multi_agent_v1.spawn_agent") == {
        "name": "spawn_agent", "namespace": "multi_agent_v1"}  # fmt: skip
    assert tools.call("exec_command") == {"name": "exec_command"}
    assert tools.left_out == ["web_search"]
    # No effort asked (the model's default); no summary is written.
    assert list(ctx.ignored) == ["include", "prompt_cache_key", "client_metadata",
                                 "reasoning.summary", "tools[web_search]"]  # fmt: skip
    assert [m.role for m in chat.messages] == ["developer", "developer", "user", "user"]


def test_codex_default_model_request_its_additional_tools_item(ctx):
    _, tools, chat = _chat(_recorded("codex_default_model_first_request.json")["body"])
    names = [t.function.name for t in chat.tools or []]
    assert "collaboration.spawn_agent" in names and "clock.sleep" in names
    assert tools.left_out == ["custom"]  # its free-form `exec` tool
    assert "tools[custom]" in ctx.ignored and "text.verbosity" in ctx.ignored
    assert [m.role for m in chat.messages][-2:] == ["user", "user"]
    assert chat.reasoning_effort == "low" and "reasoning.context" in ctx.ignored


def test_codex_requests_are_refused_by_name_with_strict_fields(strict):
    with pytest.raises(InvalidParameter) as err:
        _chat(_recorded("codex_first_request.json")["body"])
    assert err.value.param == "tools[8].type" and "hosted tool" in err.value.message


def test_a_namespaced_call_sent_back_is_the_flat_name(ctx):
    call = {"type": "function_call", "call_id": "c1", "namespace": "ns", "name": "f",
            "arguments": "{}"}  # fmt: skip
    (msg,) = input_messages([call])
    assert msg["tool_calls"][0]["function"]["name"] == "ns.f" == flat_name("ns", "f")


def test_a_long_flat_name_stays_a_valid_tool_name(ctx):
    long = flat_name("mcp__" + "server" * 10, "tool_with_a_long_name" * 2)
    assert len(long) == 64
    ns = {"type": "namespace", "name": "mcp__" + "server" * 10, "description": "",
          "tools": [{"type": "function", "name": "tool_with_a_long_name" * 2,
                     "parameters": {"type": "object"}}]}  # fmt: skip
    _, tools, chat = _chat({"model": "m", "input": "hi", "tools": [ns]})
    assert chat.tools[0].function.name == long
    assert tools.call(long)["name"] == "tool_with_a_long_name" * 2


def test_allowed_tools_keeps_only_those(ctx):
    fn = {"type": "function", "name": "a", "parameters": {"type": "object"}}
    ns = {"type": "namespace", "name": "n", "description": "", "tools": [{**fn, "name": "b"}]}
    choice = {"type": "allowed_tools", "mode": "required",
              "tools": [{"type": "namespace", "name": "n"}, {"type": "web_search"}]}  # fmt: skip
    _, _, chat = _chat({"model": "m", "input": "hi", "tools": [fn, ns], "tool_choice": choice})
    assert [t.function.name for t in chat.tools] == ["n.b"] and chat.tool_choice == "required"
    only_hosted = {**choice, "tools": [{"type": "web_search"}]}
    with pytest.raises(InvalidParameter) as err:
        _chat({"model": "m", "input": "hi", "tools": [fn], "tool_choice": only_hosted})
    assert err.value.param == "tool_choice.tools"


def test_claude_code_request_reports_its_hints_and_keeps_its_system_turn(ctx):
    req = validate(MessagesRequest, _recorded("claude_first_request.json")["body"])
    chat = req.to_chat()
    assert [m.role for m in chat.messages] == ["system", "user", "system"]
    assert {"thinking", "context_management", "output_config.effort", "metadata",
            "messages[].output_config", "tools[].defer_loading"} <= set(ctx.ignored)  # fmt: skip


def test_anthropic_output_config_format_constrains_the_answer(ctx):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "output_config": {"format": {"type": "json_schema", "schema": schema},
                              "effort": "low"}}  # fmt: skip
    chat = validate(MessagesRequest, body).to_chat()
    assert chat.response_format.json_schema.schema_ == schema
    assert list(ctx.ignored) == ["output_config.effort"]
