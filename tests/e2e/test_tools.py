"""Tool calling through the openai SDK, unchanged: every tool_choice form, history with
calls and results, streaming, and the requests that cannot be honoured."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.conftest import MODEL, Daemon


# A daemon of their own: the long tool instructions must not change what the shared
# daemon's KV cache holds for other tests (llama.cpp's numbers depend on the batch shapes
# a prompt is decoded in, and prefix reuse changes them).
@pytest.fixture(scope="module")
def daemon():
    with Daemon("--parallel", "2", "--context-size", "2048").wait_healthy() as d:
        yield d


@pytest.fixture(scope="module")
def openai_client(daemon):
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    yield client
    client.close()


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _chat(client, **kw):
    kw = {"messages": ASK, "temperature": 0, "max_tokens": 100, **kw}
    return client.chat.completions.create(model=MODEL, **kw)


def _check_call(call, name, schema):
    import jsonschema

    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == name
    jsonschema.validate(json.loads(call.function.arguments), schema)  # a JSON string


def test_required_gives_at_least_one_schema_valid_call(openai_client):
    out = _chat(openai_client, tools=[WEATHER, ADD], tool_choice="required")
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert 1 <= len(calls) <= 2 and len({c.id for c in calls}) == len(calls)
    for call in calls:
        spec = WEATHER if call.function.name == "get_weather" else ADD
        _check_call(call, spec["function"]["name"], spec["function"]["parameters"])


def test_a_named_tool_choice_calls_exactly_that_function(openai_client):
    named = {"type": "function", "function": {"name": "add"}}
    out = _chat(openai_client, tools=[WEATHER, ADD], tool_choice=named)
    calls = out.choices[0].message.tool_calls
    assert len(calls) == 1
    _check_call(calls[0], "add", ADD["function"]["parameters"])


def test_parallel_tool_calls_false_means_one_call(openai_client):
    out = _chat(
        openai_client, tools=[WEATHER, ADD], tool_choice="required", parallel_tool_calls=False
    )
    assert len(out.choices[0].message.tool_calls) == 1


def test_none_never_calls_and_answers_in_text(openai_client):
    out = _chat(openai_client, tools=[WEATHER], tool_choice="none", max_tokens=20)
    choice = out.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_history_with_calls_and_results_is_accepted(openai_client):
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "c"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees and sunny"},
    ]
    out = _chat(openai_client, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=20)
    assert out.choices[0].message.content
    # The history's calls and result reach the model: the prompt is longer than the question's.
    bare = _chat(openai_client, tools=[WEATHER], tool_choice="none", max_tokens=1)
    assert out.usage.prompt_tokens > bare.usage.prompt_tokens + 20


def test_streamed_calls_assemble_to_the_whole_answer(openai_client):
    whole = _chat(
        openai_client, tools=[WEATHER, ADD], tool_choice="required", parallel_tool_calls=False
    )
    stream = _chat(
        openai_client,
        tools=[WEATHER, ADD],
        tool_choice="required",
        parallel_tool_calls=False,
        stream=True,
    )
    names, args, finish, ids = [], "", None, []
    for chunk in stream:
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or []:
                if d.id:
                    ids.append(d.id)
                    names.append(d.function.name)
                    assert d.function.arguments == ""
                else:
                    assert d.function.name is None  # never a name twice
                    args += d.function.arguments
            assert not choice.delta.content
            finish = choice.finish_reason or finish
    call = whole.choices[0].message.tool_calls[0]
    assert names == [call.function.name] and len(ids) == 1 and finish == "tool_calls"
    # The same call. Its text can differ in a space: the second request reuses the first's
    # cached prefix, and llama.cpp's numbers depend on the batch shapes (the deltas add up
    # exactly to what the model wrote: tests/unit/test_tools.py, cut at every character).
    assert json.loads(args) == json.loads(call.function.arguments)


@pytest.mark.parametrize(
    ("kw", "param", "says"),
    [
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice", "not in tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad", "parameters": {"type": 5}}}]},
         "tools[0].function.parameters", "bad"),
        ({"messages": [*ASK, {"role": "tool", "content": "x"}], "tools": [WEATHER]},
         "messages[1].tool_call_id", "tool_call_id"),
        ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
          "function": {"name": "get_weather", "arguments": "{not json"}}]}], "tools": [WEATHER]},
         "messages[1].tool_calls[0].function.arguments", "not valid JSON"),
        ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
         "response_format", "cannot be combined"),
    ],
)  # fmt: skip
def test_what_cannot_be_honoured_is_a_400_that_says_why(openai_client, kw, param, says):
    with pytest.raises(openai.BadRequestError) as info:
        _chat(openai_client, **kw)
    assert info.value.body["param"] == param and says in info.value.body["message"]


def test_instructor_gets_its_typed_result_in_tools_and_json_schema_modes(daemon):
    """instructor, unchanged, in its two default ways of asking for a typed result."""
    import instructor
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    raw = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    for mode in (instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA):
        client = instructor.from_openai(raw, mode=mode)
        city = client.chat.completions.create(
            model=MODEL,
            response_model=City,
            messages=[{"role": "user", "content": "Paris is a city in France. Extract it."}],
            temperature=0,
            max_tokens=60,
            max_retries=0,
        )
        assert isinstance(city, City) and city.name and city.country


def test_ollama_chat_tools_through_the_ollama_client(daemon):
    """/api/chat: arguments as an object, a streamed call whole in one line, tool results
    with tool_name, history arguments as objects or strings, tool_choice as an extension."""
    import ollama

    client = ollama.Client(host=daemon.url, timeout=120)
    opts = {"temperature": 0, "num_predict": 100}
    forced = {"type": "function", "function": {"name": "get_weather"}}
    # tool_choice is Mullama's extension on /api/chat: the client passes it as-is via httpx.
    import httpx

    body = {"model": MODEL, "messages": ASK, "tools": [WEATHER, ADD], "tool_choice": forced,
            "options": opts, "stream": False}  # fmt: skip
    reply = httpx.post(daemon.url + "/api/chat", json=body, timeout=120).json()
    calls = reply["message"]["tool_calls"]
    assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather"
    assert (
        isinstance(calls[0]["function"]["arguments"], dict) and calls[0]["function"]["index"] == 0
    )
    assert reply["message"]["content"] == "" and reply["done"]
    lines = [
        line
        for line in httpx.post(
            daemon.url + "/api/chat", json={**body, "stream": True}, timeout=120
        ).iter_lines()
        if line
    ]
    import json as _json

    with_calls = [
        _json.loads(x) for x in lines if "tool_calls" in _json.loads(x).get("message", {})
    ]
    assert len(with_calls) == 1  # the call arrives whole, in one line
    assert (
        with_calls[0]["message"]["tool_calls"][0]["function"]["arguments"]
        == calls[0]["function"]["arguments"]
    )
    # The ollama client's own shapes: tools, a history call with object arguments and a
    # tool result by tool_name; "auto" may answer in text or call, both are well formed.
    history = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]},
        {"role": "tool", "content": "21 degrees and sunny", "tool_name": "get_weather"},
    ]  # fmt: skip
    answer = client.chat(model=MODEL, messages=history, tools=[WEATHER], options=opts)
    assert answer.message.content or answer.message.tool_calls
    string_args = [{**history[1], "tool_calls": [{"function": {"name": "get_weather",
                   "arguments": '{"city": "Paris", "unit": "c"}'}}]}]  # fmt: skip
    resp = httpx.post(
        daemon.url + "/api/chat",
        json={"model": MODEL, "messages": [*ASK, *string_args], "stream": False, "options": opts},
        timeout=120,
    )
    assert resp.status_code == 200
    bad = httpx.post(daemon.url + "/api/chat", json={**body, "tool_choice": {"type": "function",
                     "function": {"name": "nope"}}})  # fmt: skip
    assert bad.status_code == 400 and "not in tools" in bad.json()["error"]


def test_langchain_chat_openai_structured_output_tools_and_logprobs(daemon):
    """LangChain's ChatOpenAI, unchanged: both structured-output methods, bind_tools with a
    forced tool_choice, and logprobs."""
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    class City(BaseModel):
        """A city and its country."""

        name: str
        country: str

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    llm = ChatOpenAI(
        base_url=daemon.url + "/v1", api_key="x", model=MODEL, temperature=0, max_tokens=80,
        max_retries=0,
    )  # fmt: skip
    for method in ("function_calling", "json_schema"):
        city = llm.with_structured_output(City, method=method).invoke(
            "Paris is a city in France. Extract the city."
        )
        assert isinstance(city, City) and city.name and city.country
    msg = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert [c["name"] for c in msg.tool_calls] == ["get_weather"]
    assert isinstance(msg.tool_calls[0]["args"].get("city"), str)
    scored = llm.bind(logprobs=True).invoke("Hi")
    entries = scored.response_metadata["logprobs"]["content"]
    assert entries and "".join(e["token"] for e in entries) == scored.content


def test_langchain_chat_ollama_structured_output(daemon):
    """LangChain's ChatOllama, unchanged, in its default structured-output method."""
    from langchain_ollama import ChatOllama
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    llm = ChatOllama(base_url=daemon.url, model=MODEL, temperature=0, num_predict=80)
    city = llm.with_structured_output(City).invoke("Paris is a city in France. Extract the city.")
    assert isinstance(city, City) and city.name and city.country


def test_langchain_chat_ollama_bind_tools_in_auto(daemon):
    """ChatOllama's bind_tools, unchanged: it cannot force a call (Ollama has no
    tool_choice), so the model chooses. With one earlier call and its result in the
    conversation, the tiny model calls again; the lazy grammar holds the call, once
    begun, to the tool's schema, and LangChain reads it from /api/chat."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_ollama import ChatOllama

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return "18 C"

    llm = ChatOllama(base_url=daemon.url, model=MODEL, temperature=0, num_predict=80)
    history = [
        HumanMessage("What is the weather in London?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "London"}, "id": "c1"}]),
        ToolMessage("12 C", tool_call_id="c1"),
        AIMessage("It is 12 C in London."),
        HumanMessage("What is the weather in Paris?"),
    ]
    reply = llm.bind_tools([get_weather]).invoke(history)
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert reply.content == ""


def test_a_tool_schema_with_its_own_defs_is_enforced(openai_client):
    """Nested models as frameworks write them (pydantic's $defs and $ref): the call's
    arguments follow the referenced schema."""
    order = {
        "type": "function",
        "function": {
            "name": "order",
            "description": "Order items",
            "parameters": {
                "type": "object",
                "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"},
                                         "minItems": 1, "maxItems": 2}},
                "required": ["items"],
                "$defs": {"Item": {"type": "object", "required": ["sku", "count"],
                                   "properties": {"sku": {"type": "string", "maxLength": 12},
                                                  "count": {"type": "integer"}}}},
            },
        },
    }  # fmt: skip
    resp = _chat(openai_client, messages=[{"role": "user", "content": "Order two apples."}],
                 tools=[order], tool_choice={"type": "function", "function": {"name": "order"}})  # fmt: skip
    (call,) = resp.choices[0].message.tool_calls
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, order["function"]["parameters"])
