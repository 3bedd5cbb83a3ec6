"""The request-field rule (api/fields.py) both ways, through the real clients: by default
a field Mullama does not act on is accepted, listed in the Mullama-Ignored-Fields header
and counted in /metrics; with --strict-fields the same request is a 400 naming it. And
the agents' shapes that are served rather than ignored: Codex's namespace tools (a call
comes back with its namespace, and goes back in the same way), hosted and server tools
left out of the prompt unless tool_choice forces one, Claude Code's system message in
the middle of the conversation reaching the prompt."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.conftest import MODEL, Daemon

HEADER = "mullama-ignored-fields"
ASK = "What is the weather in Paris?"
PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER_FN = {"type": "function", "name": "get_weather", "description": "The weather in a city",
              "parameters": PARAMS, "strict": True}  # fmt: skip
WEATHER_NS = {"type": "namespace", "name": "weather", "description": "Weather tools.",
              "tools": [WEATHER_FN]}  # fmt: skip
WEATHER_TOOL = {"name": "get_weather", "description": "The weather in a city",
                "input_schema": PARAMS}  # fmt: skip
WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def daemon():
    with Daemon("--parallel", "2", "--context-size", "2048").wait_healthy() as d:
        yield d


@pytest.fixture(scope="module")
def strict():
    with Daemon("--parallel", "1", "--context-size", "2048", "--strict-fields").wait_healthy() as d:
        yield d


@pytest.fixture(scope="module")
def oai(daemon):
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def claude(daemon):
    client = anthropic.Anthropic(base_url=daemon.url, api_key="x", max_retries=0)
    yield client
    client.close()


def _ignored(headers: httpx.Headers) -> list[str]:
    return headers[HEADER].split(",") if HEADER in headers else []


# ---- the rule, both ways -----------------------------------------------------------

_CHAT = {"model": MODEL, "messages": HI, "max_tokens": 2}
_RESP = {"model": MODEL, "input": "Hi", "max_output_tokens": 2}
_MSGS = {"model": MODEL, "messages": HI, "max_tokens": 2}
_OLLAMA = {"model": MODEL, "messages": HI, "stream": False, "options": {"num_predict": 2}}

# (path, body, the name reported by default, what the strict daemon's 400 names)
_NOT_ACTED_ON = [
    ("/v1/chat/completions", {**_CHAT, "frobnicate": {"x": 1}}, "frobnicate", "frobnicate"),
    ("/v1/chat/completions", {**_CHAT, "verbosity": "high"}, "verbosity", "verbosity"),
    ("/v1/responses", {**_RESP, "tools": [{"type": "web_search"}]}, "tools[web_search]",
     "tools[0].type"),
    ("/v1/responses", {**_RESP, "generate": True}, "generate", "generate"),
    ("/v1/messages", {**_MSGS, "context_management": {"edits": [
        {"type": "clear_thinking_20251015", "keep": "all"}]}}, "context_management",
     "context_management"),
    ("/v1/messages", {**_MSGS, "output_config": {"effort": "high"}}, "output_config.effort",
     "output_config.effort"),
    ("/v1/messages", {**_MSGS, "tools": [WEB_SEARCH]}, "tools[web_search_20250305]",
     "web_search_20250305"),
    ("/api/chat", {**_OLLAMA, "options": {"num_predict": 2, "top_z": 1}}, "options.top_z",
     "options.top_z"),
    ("/completion", {"prompt": "Hi", "n_predict": 2, "frobnicate": 1}, "frobnicate",
     "frobnicate"),
]  # fmt: skip


def _error(resp: httpx.Response) -> str:
    """The error's text in any API's shape (OpenAI's, Anthropic's, Ollama's)."""
    err = resp.json()["error"]
    return err if isinstance(err, str) else f"{err.get('param')} {err['message']}"


@pytest.mark.parametrize(("path", "body", "reported", "refused"), _NOT_ACTED_ON)
def test_what_is_not_acted_on_is_reported_by_default_and_refused_when_strict(
    daemon, strict, path, body, reported, refused
):
    tolerant = httpx.post(daemon.url + path, json=body, timeout=60)
    assert tolerant.status_code == 200, tolerant.text
    assert reported in _ignored(tolerant.headers)
    refusal = httpx.post(strict.url + path, json=body, timeout=60)
    assert refusal.status_code == 400, refusal.text
    assert refused in _error(refusal)
    assert HEADER not in refusal.headers  # nothing was accepted


def test_fields_that_change_nothing_are_accepted_strict_or_not(daemon, strict):
    body = {**_RESP, "client_metadata": {"thread_id": "t"}, "prompt_cache_key": "k",
            "include": ["reasoning.encrypted_content"], "store": False}  # fmt: skip
    for d in (daemon, strict):
        resp = httpx.post(d.url + "/v1/responses", json=body, timeout=60)
        assert resp.status_code == 200, resp.text
        assert _ignored(resp.headers) == ["client_metadata", "prompt_cache_key", "include"]


def test_what_changes_the_answer_is_refused_either_way(daemon):
    resp = httpx.post(daemon.url + "/v1/chat/completions",
                      json={**_CHAT, "logit_bias": {"42": 5}}, timeout=60)  # fmt: skip
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "logit_bias"


def test_an_ignored_field_is_in_the_header_and_counted(oai, daemon):
    raw = oai.chat.completions.with_raw_response.create(
        model=MODEL, messages=HI, max_tokens=2, extra_body={"x_counted_field": {"a": 1}}
    )
    assert raw.parse().choices[0].message.content is not None
    assert _ignored(raw.headers) == ["x_counted_field"]
    plain = oai.chat.completions.with_raw_response.create(model=MODEL, messages=HI, max_tokens=2)
    assert HEADER not in plain.headers
    metrics = httpx.get(daemon.url + "/metrics", timeout=10).text
    assert 'mullama_ignored_fields_total{api="openai",field="x_counted_field"} 1.0' in metrics


def test_beta_headers_and_hints_of_claude_code_are_accepted(claude):
    raw = claude.messages.with_raw_response.create(
        model=MODEL, max_tokens=4, messages=HI,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        thinking={"type": "adaptive"}, output_config={"effort": "medium"},
        metadata={"user_id": "u"},
        extra_headers={"anthropic-beta": "context-management-2025-06-27,effort-2025-11-24"},
    )  # fmt: skip
    assert raw.parse().content[0].type == "text"
    assert set(_ignored(raw.headers)) == {
        "anthropic-beta", "system[].cache_control", "thinking", "output_config.effort",
        "metadata",
    }  # fmt: skip


# ---- Codex's namespace tools ---------------------------------------------------------


def test_a_namespaced_call_comes_back_with_its_namespace_and_goes_back(oai):
    forced = {"type": "function", "name": "get_weather"}
    first = oai.responses.create(model=MODEL, input=ASK, tools=[WEATHER_NS], tool_choice=forced,
                                 temperature=0)  # fmt: skip
    (call,) = [o for o in first.output if o.type == "function_call"]
    assert (call.namespace, call.name) == ("weather", "get_weather")
    assert json.loads(call.arguments) == {"city": "Paris"}
    events = list(oai.responses.create(model=MODEL, input=ASK, tools=[WEATHER_NS], stream=True,
                                       tool_choice=forced, temperature=0))  # fmt: skip
    added = next(e for e in events if e.type == "response.output_item.added")
    assert (added.item.namespace, added.item.name) == ("weather", "get_weather")
    # The call and its output sent back, as Codex does (store false, the whole input):
    # the same prompt as continuing the stored response.
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"}
    items = [{"role": "user", "content": ASK},
             {"type": "function_call", "call_id": call.call_id, "namespace": "weather",
              "name": "get_weather", "arguments": call.arguments}, result]  # fmt: skip
    sent = oai.responses.create(model=MODEL, input=items, tools=[WEATHER_NS], tool_choice="none",
                                max_output_tokens=1)  # fmt: skip
    stored = oai.responses.create(model=MODEL, previous_response_id=first.id, input=[result],
                                  tools=[WEATHER_NS], tool_choice="none", max_output_tokens=1)  # fmt: skip
    alone = oai.responses.create(model=MODEL, input=ASK, tools=[WEATHER_NS], tool_choice="none",
                                 max_output_tokens=1)  # fmt: skip
    assert sent.usage.input_tokens == stored.usage.input_tokens > alone.usage.input_tokens


# ---- tools Mullama does not have -----------------------------------------------------


def test_a_hosted_tool_not_forced_is_left_out_and_reported(oai):
    both = oai.responses.with_raw_response.create(
        model=MODEL, input=ASK, tools=[WEATHER_FN, {"type": "web_search"}], max_output_tokens=1
    )
    assert _ignored(both.headers) == ["tools[web_search]"]
    one = oai.responses.create(model=MODEL, input=ASK, tools=[WEATHER_FN], max_output_tokens=1)
    assert both.parse().usage.input_tokens == one.usage.input_tokens  # not in the prompt


def test_a_hosted_tool_forced_is_refused_by_name(oai, claude):
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model=MODEL, input=ASK, tools=[WEATHER_FN, {"type": "web_search"}],
                             tool_choice={"type": "web_search_preview"})  # fmt: skip
    assert info.value.body["param"] == "tool_choice"
    assert "web_search_preview" in info.value.body["message"]
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(model=MODEL, max_tokens=4, messages=HI,
                               tools=[WEATHER_TOOL, WEB_SEARCH],
                               tool_choice={"type": "tool", "name": "web_search"})  # fmt: skip
    assert "web_search" in refused.value.body["error"]["message"]


def test_a_server_tool_not_forced_is_left_out_of_the_prompt(claude):
    both = claude.messages.count_tokens(model=MODEL, messages=HI, tools=[WEATHER_TOOL, WEB_SEARCH])
    one = claude.messages.count_tokens(model=MODEL, messages=HI, tools=[WEATHER_TOOL])
    assert both.input_tokens == one.input_tokens


# ---- a system message in the middle of the conversation -----------------------------

NOTE = "Answer in French, and mention the river Seine in every answer you give."


def test_a_system_message_mid_conversation_reaches_the_prompt(claude, daemon):
    ask = [{"role": "user", "content": ASK}]
    noted = [*ask, {"role": "system", "content": [
        {"type": "text", "text": NOTE, "cache_control": {"type": "ephemeral"}}]}]  # fmt: skip
    plain = claude.messages.count_tokens(model=MODEL, messages=ask).input_tokens
    more = claude.messages.count_tokens(model=MODEL, messages=noted).input_tokens
    note = httpx.post(daemon.url + "/tokenize",
                      json={"prompt": NOTE, "add_special_tokens": False}, timeout=30).json()  # fmt: skip
    assert more - plain >= note["count"]
    reply = claude.messages.with_raw_response.create(model=MODEL, max_tokens=8, messages=noted)
    message = reply.parse()
    assert message.content[0].type == "text"
    # What the model was given is what count_tokens counts.
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens == more
    assert "messages[].content[].cache_control" in _ignored(reply.headers)
