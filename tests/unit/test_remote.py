"""The remote-engine parsers: --remote/--remote-opt, the upstream request bodies, and the
upstream's stream read back into the chunks the API layer reads (tool calls included)."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from mullama.api.callreader import CallArgs, CallDone, CallReader, CallStart, Content
from mullama.api.tools import NamedToolChoice, ToolSpec, plan_tools
from mullama.api.toolsyntax import REMOTE_TOOLS
from mullama.engine.protocol import GenerateRequest, SamplingParams
from mullama.engine.remote import StreamReader, chat_body, completion_body
from mullama.errors import ClientError
from mullama.models.remote import parse_remotes

TOOLS = [
    ToolSpec.model_validate({"type": "function", "function": {"name": n, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}})
    for n in ("get_weather", "get_time")
]  # fmt: skip


def test_remotes_parse_with_their_options():
    out = parse_remotes(
        ["big=http://a:8000/v1, https://b:8000/v1/", "small=http://c/v1"],
        ["big:upstream_model=org/Model:7b", "big:max-inflight=4", "small:timeout=30"],
    )
    urls, opts = out["big"]
    assert urls == ["http://a:8000/v1", "https://b:8000/v1"]
    assert opts.upstream_model == "org/Model:7b" and opts.max_inflight == 4
    assert out["small"][1].timeout == 30.0 and out["small"][1].max_inflight == 16


@pytest.mark.parametrize(
    ("remotes", "opts", "says"),
    [
        (["big"], [], "expected NAME=URL"),
        (["big=ftp://a/v1"], [], "not an http(s) URL"),
        (["big=http://a/v1", "big=http://b/v1"], [], "given twice"),
        (["big=http://a/v1"], ["other:timeout=3"], "there is no --remote 'other'"),
        (["big=http://a/v1"], ["big:colour=red"], "unknown key 'colour'"),
        (["big=http://a/v1"], ["big:max_inflight=0"], "max_inflight"),
        (["big=http://a/v1"], ["big:timeout=soon"], "timeout"),
    ],
)
def test_a_malformed_remote_is_refused_by_name(remotes, opts, says):
    with pytest.raises(ClientError) as exc:
        parse_remotes(remotes, opts)
    assert says in exc.value.message


def test_a_bad_remote_stops_the_start_with_the_reason():
    done = subprocess.run(
        [sys.executable, "-m", "mullama", "serve", "--remote", "x=nowhere", "--socket", "none"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "not an http(s) URL" in done.stderr


def _plan(choice="auto", parallel=None):
    return plan_tools(TOOLS, choice, parallel, None, REMOTE_TOOLS)


def test_the_chat_body_carries_tools_choice_and_sampling():
    plan = _plan("required", parallel=False)
    params = SamplingParams(max_tokens=20, temperature=0.0, top_k=5, repeat_penalty=1.1, seed=3)
    params.tool_calls = plan.constraint()
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "noon", "tool_call_id": None, "name": "get_time"},
    ]  # fmt: skip
    req = GenerateRequest("r", params, messages=messages, tools=plan.tools_for_template())
    body = chat_body(req, "m", "org/model")
    assert body["model"] == "org/model" and body["stream"] is True
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert body["messages"][2]["tool_call_id"] == "c1"  # Ollama's results name no call
    assert body["top_k"] == 5 and body["repeat_penalty"] == body["repetition_penalty"] == 1.1
    assert "min_p" not in body  # the engine's own default stays
    named = _plan(NamedToolChoice.model_validate({"type": "function",
                                                  "function": {"name": "get_weather"}}))  # fmt: skip
    params.tool_calls = named.constraint()
    req = GenerateRequest("r", params, messages=messages[:1], tools=named.tools_for_template())
    assert chat_body(req, "m", "m")["tool_choice"]["function"]["name"] == "get_weather"


def test_what_no_remote_engine_takes_is_refused_by_name():
    with pytest.raises(ClientError) as exc:
        chat_body(GenerateRequest("r", SamplingParams(), messages=[], template="{{x}}"), "m", "m")
    assert exc.value.param == "template"
    with pytest.raises(ClientError) as exc:
        completion_body(
            GenerateRequest("r", SamplingParams(context_limit=99), prompt="x"), "m", "m"
        )
    assert exc.value.param == "num_ctx"
    with pytest.raises(ClientError) as exc:
        p = SamplingParams(logprobs=0, prompt_logprobs=True)
        completion_body(GenerateRequest("r", p, prompt="x"), "m", "m")
    assert exc.value.param == "echo"


def _deltas(*deltas, finish="tool_calls", usage=None):
    events = [{"choices": [{"index": 0, "delta": d}]} for d in deltas]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    events.append(
        {
            "choices": [],
            "usage": usage
            or {
                "prompt_tokens": 9,
                "completion_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        }
    )
    return events


def test_streamed_upstream_calls_are_read_as_calls_with_their_argument_pieces():
    events = _deltas(
        {"content": "Let me check\x02."},
        {"tool_calls": [{"index": 0, "id": "u1", "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {"tool_calls": [{"index": 1, "id": "u2", "function": {"name": "get_time"}}]},
    )  # fmt: skip
    reader, calls = StreamReader(chat=True), CallReader(_plan())
    out = []
    for event in events:
        chunk = reader.read(event)
        if chunk is not None:
            out += calls.push(chunk.text)
    last = reader.last()
    out += calls.push(last.text, final=True)
    assert "".join(e.text for e in out if isinstance(e, Content)) == "Let me check."
    assert [e.name for e in out if isinstance(e, CallStart)] == ["get_weather", "get_time"]
    args = "".join(e.piece for e in out if isinstance(e, CallArgs) and e.index == 0)
    assert orjson.loads(args) == {"city": "Paris"}
    assert [c["function"]["arguments"] for c in calls.calls][1] == "{}"
    assert sum(isinstance(e, CallDone) for e in out) == 2
    assert calls.finish(last.finish_reason) == "tool_calls"
    assert (last.prompt_tokens, last.completion_tokens, last.cached_tokens) == (9, 7, 4)


def test_completion_streams_and_their_logprobs_become_engine_entries():
    reader = StreamReader(chat=False)
    chunk = reader.read(
        {
            "choices": [
                {
                    "index": 0,
                    "text": " Paris",
                    "logprobs": {
                        "tokens": [" Paris"],
                        "token_logprobs": [-0.25],
                        "top_logprobs": [{" Paris": -0.25}],
                    },
                }
            ]
        }
    )
    assert chunk.text == " Paris" and chunk.logprobs == [[" Paris", -0.25, [[" Paris", -0.25]]]]
    reader.read({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
    last = reader.last()
    assert last.finish_reason == "length" and last.completion_tokens == 1  # no usage: counted
