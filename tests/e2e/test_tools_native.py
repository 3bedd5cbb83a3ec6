"""Tool calling with templates that know tools: the tiny model served under the real chat
templates of Qwen 2.5 (Hermes syntax), Llama 3.2 and Mistral Nemo, as custom models.
Through the openai and ollama SDKs, unchanged: each template's own call syntax comes
back as tool_calls, streamed and whole, and the conversation's calls and results are
written in the template's own words."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import ollama
import openai
import pytest

from tests.conftest import MODEL, Daemon
from tests.e2e.test_tools import ADD

TEMPLATES = Path(__file__).parent.parent / "unit" / "templates"
FAMILIES = {
    "hermes": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "llama3": "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "mistral": "mistralai-Mistral-Nemo-Instruct-2407.jinja",
}
# How each template writes the history's call (arguments as an object, keys in order).
WRITTEN = {
    "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"unit": "c", "city": "Paris"}}'
    "\n</tool_call>",
    "llama3": '{"name": "get_weather", "parameters": {"unit": "c", "city": "Paris"}}',
    "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"unit": "c", "city": "Paris"}, '
    '"id": "abcdefgh0"}]',
}
RESULT = {"hermes": "<tool_response>\n18 C\n</tool_response>", "llama3": "18 C", "mistral": "18 C"}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city. <b>A & B</b>",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"enum": ["c", "f"]}, "city": {"type": "string"}},
            "required": ["unit", "city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
HISTORY = [
    *ASK,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "abcdefgh0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"unit": "c", "city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "abcdefgh0", "content": "18 C"},
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    store = {"MULLAMA_CACHE_DIR": str(tmp_path_factory.mktemp("store"))}  # its own models
    with Daemon("--parallel", "2", "--context-size", "2048", env=store).wait_healthy() as d:
        client = ollama.Client(host=d.url)
        for family, source in FAMILIES.items():
            template = (TEMPLATES / source).read_text()
            client.create(model=f"smol-{family}", from_=MODEL, template=template, stream=False)
        yield d


@pytest.fixture(scope="module")
def openai_client(daemon):
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    yield client
    client.close()


def _chat(client, family, **kw):
    kw = {"messages": ASK, "temperature": 0, "max_tokens": 120, "tools": [WEATHER], **kw}
    return client.chat.completions.create(model=f"smol-{family}", **kw)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_a_forced_call_comes_back_in_the_templates_syntax(openai_client, family, choice):
    resp = _chat(openai_client, family, tools=[WEATHER, ADD], tool_choice=choice)
    c = resp.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    calls = c.message.tool_calls
    assert calls and (choice == "required" or [t.function.name for t in calls] == ["get_weather"])
    for call in calls:
        schema = (WEATHER if call.function.name == "get_weather" else ADD)["function"]
        jsonschema.validate(json.loads(call.function.arguments), schema["parameters"])
        assert call.type == "function"
        if family == "mistral":  # ids its template accepts back: 9 letters and digits
            assert len(call.id) == 9 and call.id.isalnum()
    assert len({call.id for call in calls}) == len(calls)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_streamed_call_adds_up_to_the_whole_reply(openai_client, family):
    kw = {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    whole = _chat(openai_client, family, **kw).choices[0].message.tool_calls[0]
    deltas, finish = [], None
    for chunk in _chat(openai_client, family, stream=True, **kw):
        delta = chunk.choices[0].delta
        deltas += delta.tool_calls or []
        assert not delta.content  # markup of a call never reaches content
        finish = chunk.choices[0].finish_reason or finish
    first = deltas[0]
    assert first.id and first.type == "function" and first.function.name == "get_weather"
    assert first.function.arguments == ""
    assert all(d.function.name is None for d in deltas[1:])
    assert "".join(d.function.arguments or "" for d in deltas) == whole.function.arguments
    assert finish == "tool_calls"


def test_parallel_tool_calls_off_gives_one_call(openai_client):
    resp = _chat(
        openai_client, "hermes", tools=[WEATHER, ADD], tool_choice="required",
        parallel_tool_calls=False,
        messages=[{"role": "user", "content": "Weather in Paris, and 2 plus 3?"}],
    )  # fmt: skip
    assert len(resp.choices[0].message.tool_calls) == 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_history_and_tools_are_written_in_the_templates_words(daemon, openai_client, family):
    tokenized = httpx.post(
        daemon.url + "/tokenize",
        json={"model": f"smol-{family}", "messages": HISTORY, "tools": [WEATHER],
              "return_token_strs": True},
    ).json()  # fmt: skip
    prompt = "".join(tokenized["token_strs"])
    assert WRITTEN[family] in prompt and RESULT[family] in prompt
    # transformers' tojson: no HTML escaping, the schema's key order kept.
    assert "<b>A & B</b>" in prompt
    assert prompt.index('"unit"') < prompt.index('"city"')  # tools come first
    # and a chat request with that history is answered
    reply = _chat(openai_client, family, messages=HISTORY, max_tokens=8)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_ollama_chat_gets_the_templates_calls_with_object_arguments(daemon):
    # tool_choice is Mullama's extension of /api/chat (the ollama SDK has no argument
    # for it), so the body goes as JSON.
    body = {
        "model": "smol-hermes",
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": "required",
        "stream": False,
        "options": {"temperature": 0, "num_predict": 120},
    }
    resp = httpx.post(daemon.url + "/api/chat", json=body, timeout=120).json()
    (call,) = resp["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and resp["message"]["content"] == ""
    jsonschema.validate(call["function"]["arguments"], WEATHER["function"]["parameters"])
    lines = [
        json.loads(line)
        for line in httpx.post(daemon.url + "/api/chat", json={**body, "stream": True}, timeout=120)
        .text.strip()
        .splitlines()
    ]
    with_calls = [line for line in lines if line["message"].get("tool_calls")]
    assert len(with_calls) == 1  # a call arrives whole, in one chunk
    assert with_calls[0]["message"]["tool_calls"][0]["function"] == call["function"]
    assert "<tool_call>" not in "".join(line["message"]["content"] for line in lines)
