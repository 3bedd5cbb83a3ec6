"""The APIs coding agents speak, through their real clients, unchanged: OpenAI's Responses
API (the openai SDK's ``client.responses``, and the OpenAI Agents SDK's default model
class) and Anthropic's Messages API (the ``anthropic`` SDK), on a daemon with an API key
and model aliases, as Claude Code and Codex CLI are pointed at it."""

from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import MODEL, Daemon

KEY = "sk-agents-" + "7" * 24
ALIASES = ("--model-alias", f"claude-sonnet-4-5={MODEL}", "--model-alias", f"gpt-5={MODEL}")
WEATHER_FN = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": WEATHER_FN["parameters"],
}
ASK = "What is the weather in Paris?"
CAT = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 30}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def daemon():
    args = ("--parallel", "2", "--context-size", "2048", *ALIASES)
    with Daemon(*args, env={"MULLAMA_API_KEY": KEY}).wait_healthy() as d:
        yield d


@pytest.fixture(scope="module")
def oai(daemon):
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key=KEY, max_retries=0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def claude(daemon):
    client = anthropic.Anthropic(base_url=daemon.url, api_key=KEY, max_retries=0)
    yield client
    client.close()


# ---- Responses API --------------------------------------------------------------------


def test_responses_text_whole_and_streamed(oai):
    whole = oai.responses.create(model="gpt-5", input="Say hello.", max_output_tokens=16,
                                 temperature=0)  # fmt: skip
    assert whole.model == "gpt-5" and whole.object == "response"
    assert whole.output_text and whole.output[0].type == "message"
    assert whole.usage.output_tokens == 16 and whole.status == "incomplete"
    assert whole.incomplete_details.reason == "max_output_tokens"
    events = list(
        oai.responses.create(
            model="gpt-5", input="Say hello.", max_output_tokens=16, temperature=0, stream=True
        )  # fmt: skip
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]  # fmt: skip
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text == whole.output_text


def test_responses_forced_call_then_its_output_continues_the_conversation(oai):
    first = oai.responses.create(
        model=MODEL, input=ASK, tools=[WEATHER_FN], temperature=0,
        tool_choice={"type": "function", "name": "get_weather"},
    )  # fmt: skip
    (call,) = [o for o in first.output if o.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert first.status == "completed"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"}
    follow = oai.responses.create(
        model=MODEL, previous_response_id=first.id, input=[result], tools=[WEATHER_FN],
        tool_choice="none", temperature=0, max_output_tokens=24,
    )  # fmt: skip
    assert follow.previous_response_id == first.id and follow.output[0].type == "message"
    # The stored conversation came first: the follow-up's prompt holds the first turn.
    alone = oai.responses.create(model=MODEL, input=ASK, max_output_tokens=1)
    assert follow.usage.input_tokens > alone.usage.input_tokens
    # The same turn sent whole, without the stored response, is the same prompt.
    items = [{"role": "user", "content": ASK},
             {"type": "function_call", "call_id": call.call_id, "name": call.name,
              "arguments": call.arguments}, result]  # fmt: skip
    again = oai.responses.create(model=MODEL, input=items, tools=[WEATHER_FN],
                                 tool_choice="none", temperature=0, max_output_tokens=24)  # fmt: skip
    assert again.usage.input_tokens == follow.usage.input_tokens


def test_responses_streamed_call_arguments_add_up(oai):
    events = list(oai.responses.create(model=MODEL, input=ASK, tools=[WEATHER_FN],
                                       tool_choice="required", temperature=0, stream=True))  # fmt: skip
    added = [e for e in events if e.type == "response.output_item.added"]
    assert added[0].item.type == "function_call" and added[0].item.arguments == ""
    pieces = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"][0]
    assert pieces == done.arguments and json.loads(pieces) == {"city": "Paris"}
    assert events[-1].type == "response.completed"


def test_responses_text_format_json_schema(oai):
    resp = oai.responses.create(
        model=MODEL, input="Describe a cat as JSON.", temperature=0,
        text={"format": {"type": "json_schema", "name": "cat", "schema": CAT, "strict": True}},
    )  # fmt: skip
    jsonschema.validate(json.loads(resp.output_text), CAT)


def test_responses_are_stored_retrieved_and_deleted(oai):
    resp = oai.responses.create(model=MODEL, input="Hi", max_output_tokens=4)
    assert oai.responses.retrieve(resp.id).output_text == resp.output_text
    oai.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model=MODEL, input="Hi", previous_response_id=resp.id)
    unstored = oai.responses.create(model=MODEL, input="Hi", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(unstored.id)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search_preview"}},
         "tool_choice"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input[0].content[0].type"),
        ({"background": True}, "background"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER_FN]},
         "tool_choice"),
    ],
)  # fmt: skip
def test_responses_refuse_what_they_cannot_honour(oai, extra, param):
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(**{"model": MODEL, "input": "Hi", **extra})
    assert info.value.body["param"] == param


class City(BaseModel):
    name: str
    country: str


def test_openai_agents_sdk_on_its_default_responses_model(daemon):
    import asyncio

    from agents import (
        Agent,
        ModelSettings,
        Runner,
        function_tool,
        set_default_openai_client,
        set_tracing_disabled,  # fmt: skip
    )

    got: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        got.append(city)
        return "18 C and sunny"

    async def run() -> tuple[object, object, object]:
        set_tracing_disabled(True)
        set_default_openai_client(
            openai.AsyncOpenAI(base_url=daemon.url + "/v1", api_key=KEY, max_retries=0),
            use_for_tracing=False,
        )
        settings = ModelSettings(temperature=0, max_tokens=100)
        typed = Agent(name="x", instructions="Extract the city.", model="gpt-5",
                      output_type=City, model_settings=settings)  # fmt: skip
        city = (await Runner.run(typed, "Paris is a city in France.")).final_output
        stream = Runner.run_streamed(typed, "Paris is a city in France.")
        async for _ in stream.stream_events():
            pass
        forced = ModelSettings(temperature=0, max_tokens=100, tool_choice="get_weather")
        agent = Agent(name="w", instructions="Answer with the tool.", model="gpt-5",
                      tools=[get_weather], tool_use_behavior="stop_on_first_tool",
                      model_settings=forced)  # fmt: skip
        answer = (await Runner.run(agent, ASK)).final_output
        return city, stream.final_output, answer

    city, streamed, answer = asyncio.run(run())
    assert city == City(name="Paris", country="France") and streamed == city
    assert answer == "18 C and sunny" and got == ["Paris"]


# ---- Anthropic Messages API -----------------------------------------------------------


def test_messages_text_whole_and_streamed(claude):
    whole = claude.messages.create(model="claude-sonnet-4-5", max_tokens=16,
                                   messages=[{"role": "user", "content": "Say hello."}],
                                   extra_body={"temperature": 0})  # fmt: skip
    assert whole.model == "claude-sonnet-4-5" and whole.role == "assistant"
    assert whole.content[0].type == "text" and whole.content[0].text
    assert whole.stop_reason == "max_tokens" and whole.usage.output_tokens == 16
    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=16,
                                messages=[{"role": "user", "content": "Say hello."}],
                                extra_body={"temperature": 0}) as stream:  # fmt: skip
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == whole.content[0].text
    assert final.stop_reason == "max_tokens"


def test_messages_forced_tool_use_and_its_result(claude):
    ask = [{"role": "user", "content": ASK}]
    first = claude.messages.create(
        model=MODEL, max_tokens=80, messages=ask, tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"}, extra_body={"temperature": 0},
    )  # fmt: skip
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    with claude.messages.stream(model=MODEL, max_tokens=80, messages=ask, tools=[WEATHER_TOOL],
                                tool_choice={"type": "any"},
                                extra_body={"temperature": 0}) as stream:  # fmt: skip
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use" and streamed.content[-1].input == use.input
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "18 C and sunny"}
    follow = claude.messages.create(
        model=MODEL, max_tokens=24, tools=[WEATHER_TOOL], tool_choice={"type": "none"},
        messages=[*ask, {"role": "assistant", "content": first.content},
                  {"role": "user", "content": [result]}],
        extra_body={"temperature": 0},
    )  # fmt: skip
    assert follow.content[0].type == "text" and follow.stop_reason in ("end_turn", "max_tokens")
    alone = claude.messages.count_tokens(model=MODEL, messages=ask)
    # Anthropic's usage: input_tokens computed + those read from the KV cache = the prompt.
    prompt = follow.usage.input_tokens + follow.usage.cache_read_input_tokens
    assert prompt > alone.input_tokens  # the call and its result too


def test_messages_stop_sequences(claude):
    reply = claude.messages.create(
        model=MODEL, max_tokens=60, stop_sequences=["Two"],
        messages=[{"role": "user", "content": "Count: one, two, three, four"}],
        extra_body={"temperature": 0},
    )  # fmt: skip
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == "Two"
    assert "Two" not in reply.content[0].text


def test_messages_count_tokens_is_what_a_request_feeds_the_model(claude):
    messages = [{"role": "user", "content": ASK}]
    plain = claude.messages.count_tokens(model=MODEL, messages=messages)
    tools = claude.messages.count_tokens(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    assert tools.input_tokens > plain.input_tokens
    sent = claude.messages.create(model=MODEL, max_tokens=1, messages=messages,
                                  tools=[WEATHER_TOOL])  # fmt: skip
    assert sent.usage.input_tokens + sent.usage.cache_read_input_tokens == tools.input_tokens


def test_messages_accept_thinking_and_a_system_prompt(claude):
    reply = claude.messages.create(
        model=MODEL, max_tokens=8, system=[{"type": "text", "text": "You are terse."}],
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Hi"}],
    )  # fmt: skip
    assert reply.content[0].type == "text"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "AAAA"}}]}]}, "image"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}],
          "tool_choice": {"type": "tool", "name": "web_search"}}, "web_search_20250305"),
        ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [WEATHER_TOOL]}, "nope"),
        ({"max_tokens": None}, "max_tokens"),
        ({"tools": [{"name": "f"}]}, "input_schema"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
            "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                     "data": "AAAA"}}]}]}]}, "image"),
        ({"mcp_servers": [{"type": "url", "url": "http://x", "name": "x"}]}, "mcp_servers"),
    ],
)  # fmt: skip
def test_messages_errors_are_anthropic_shaped(daemon, body, says):
    payload = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}],
               **body}  # fmt: skip
    payload = {k: v for k, v in payload.items() if v is not None}
    r = httpx.post(daemon.url + "/v1/messages", json=payload, headers={"x-api-key": KEY})
    assert r.status_code == 400
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert says in err["error"]["message"]


def test_messages_auth_and_unknown_models_are_anthropic_shaped(daemon, claude):
    bad = anthropic.Anthropic(base_url=daemon.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="claude-opus-4", max_tokens=4,
                               messages=[{"role": "user", "content": "x"}])  # fmt: skip
    assert missing.value.body["error"]["type"] == "not_found_error"
    assert "claude-opus-4" in missing.value.body["error"]["message"]


def _active(daemon) -> int:
    status = httpx.get(daemon.url + "/api/system/status", headers={"x-api-key": KEY}).json()
    return sum(m["active_sequences"] for m in status["models_loaded"])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"max_tokens": 1500, "messages": [
            {"role": "user", "content": "Write a long story about a dragon."}]}),
        ("/v1/responses", {"max_output_tokens": 1500,
                           "input": "Write a long story about a dragon."}),
    ],
)  # fmt: skip
def test_a_client_that_leaves_frees_its_sequence_and_each_route_is_metered(daemon, path, body):
    from tests.conftest import wait_for

    payload = {"model": MODEL, "stream": True, "temperature": 0, **body}
    with httpx.stream("POST", daemon.url + path, json=payload, headers={"x-api-key": KEY},
                      timeout=60) as r:  # fmt: skip
        for line in r.iter_lines():
            if "delta" in line:  # the first text has come: the sequence is generating
                assert _active(daemon) == 1
                break
    wait_for(lambda: _active(daemon) == 0)  # the engine stopped it when the client left
    metrics = httpx.get(daemon.url + "/metrics", headers={"x-api-key": KEY}).text
    assert f'endpoint="{path}"' in metrics


def test_streams_cut_inside_a_call_end_cleanly(oai, claude):
    """max_tokens inside a forced call: no broken call is reported as done, and each
    stream still ends in its API's way (the SDKs assemble the final object)."""
    with claude.messages.stream(model=MODEL, max_tokens=6, tools=[WEATHER_TOOL],
                                messages=[{"role": "user", "content": ASK}],
                                tool_choice={"type": "any"},
                                extra_body={"temperature": 0}) as stream:  # fmt: skip
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens" and kinds[-1] == "message_stop"
    assert kinds.count("content_block_start") == kinds.count("content_block_stop")
    events = list(oai.responses.create(model=MODEL, input=ASK, tools=[WEATHER_FN],
                                       tool_choice="required", max_output_tokens=6,
                                       temperature=0, stream=True))  # fmt: skip
    assert events[-1].type == "response.incomplete"
    assert [o.status for o in events[-1].response.output] == ["incomplete"]
    assert not [e for e in events if e.type == "response.function_call_arguments.done"]


def test_messages_stream_reports_the_stop_sequence(claude):
    with claude.messages.stream(model=MODEL, max_tokens=60, stop_sequences=["Two"],
                                messages=[{"role": "user", "content": "Count: one, two, three, four"}],
                                extra_body={"temperature": 0}) as stream:  # fmt: skip
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "Two"
    assert "Two" not in text
