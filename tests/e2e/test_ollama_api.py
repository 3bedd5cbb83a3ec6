"""The Ollama API with the official `ollama` client, and structured outputs on both APIs."""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import pytest

from tests.conftest import MODEL


@pytest.fixture(scope="module")
def client(daemon) -> ollama.Client:
    return ollama.Client(host=daemon.url, timeout=120)


def test_chat_non_stream(client):
    resp = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a color."}],
        stream=False,
        options={"temperature": 0, "num_predict": 16},
    )
    assert resp.message.role == "assistant"
    assert resp.message.content
    assert resp.done and resp.done_reason in ("stop", "length")
    assert resp.prompt_eval_count > 0 and resp.eval_count > 0


def test_chat_stream_matches_non_stream(client):
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe the moon."}],
        options={"temperature": 0, "num_predict": 24},
    )
    full = client.chat(stream=False, **kwargs).message.content
    parts = list(client.chat(stream=True, **kwargs))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == full
    assert parts[-1].eval_count == client.chat(stream=False, **kwargs).eval_count


def test_generate_stream_and_not(client):
    kwargs = dict(model=MODEL, prompt="The sky is", options={"temperature": 0, "num_predict": 12})
    full = client.generate(stream=False, **kwargs)
    assert full.response and full.done
    parts = list(client.generate(stream=True, **kwargs))
    assert "".join(p.response for p in parts) == full.response
    assert parts[-1].done_reason in ("stop", "length")


def test_generate_raw_system_and_template(client):
    raw = client.generate(
        model=MODEL,
        prompt="1, 2, 3, 4,",
        raw=True,
        stream=False,
        options={"temperature": 0, "num_predict": 6},
    )
    assert raw.response.strip()
    templated = client.generate(
        model=MODEL,
        prompt="What is 2+2?",
        system="Answer with one word.",
        template="<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n"
        "{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n",
        stream=False,
        options={"temperature": 0, "num_predict": 8},
    )
    assert templated.response
    assert templated.prompt_eval_count > 10
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model=MODEL, prompt="x", template="{{ .Messages }}", stream=False)
    assert info.value.status_code == 400 and ".Messages is not supported" in info.value.error


def test_durations_are_real_and_add_up(client):
    resp = client.generate(
        model=MODEL,
        prompt="Write a sentence.",
        stream=False,
        options={"temperature": 0, "num_predict": 20},
    )
    assert resp.total_duration > 0
    assert resp.prompt_eval_duration > 0 and resp.eval_duration > 0
    assert resp.prompt_eval_duration + resp.eval_duration <= resp.total_duration
    assert resp.load_duration >= 0


def test_empty_prompt_loads_the_model(client):
    resp = client.generate(model=MODEL, prompt="", stream=False)
    assert resp.done and resp.done_reason == "load"
    assert resp.response == ""


def test_stop_and_num_predict(client):
    resp = client.generate(
        model=MODEL,
        prompt="Count: 1, 2, 3,",
        raw=True,
        stream=False,
        options={"temperature": 0, "num_predict": 5},
    )
    assert resp.eval_count <= 5
    text = client.generate(
        model=MODEL,
        prompt="Count: 1, 2, 3,",
        raw=True,
        stream=False,
        options={"temperature": 0, "num_predict": 30, "stop": ["6"]},
    ).response
    assert "6" not in text


def test_embed_and_embeddings(client):
    one = client.embed(model=MODEL, input="hello world")
    two = client.embed(model=MODEL, input=["hello world", "goodbye moon"])
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) == 576
    assert two.embeddings[0] == pytest.approx(one.embeddings[0], abs=1e-5)
    assert two.embeddings[1] != pytest.approx(one.embeddings[0], abs=1e-3)
    old = client.embeddings(model=MODEL, prompt="hello world")
    assert list(old.embedding) == pytest.approx(one.embeddings[0], abs=1e-5)


def test_list_show_ps(client):
    names = [m.model for m in client.list().models]
    assert names == [MODEL]
    listed = client.list().models[0]
    assert listed.size > 90_000_000
    assert len(listed.digest) == 64
    assert listed.details.quantization_level == "Q4_1"
    shown = client.show(MODEL)
    assert shown.details.family == "llama"
    assert "im_start" in shown.template
    assert shown.modelinfo["llama.context_length"] == 8192
    assert shown.modelinfo["general.parameter_count"] > 100_000_000
    running = client.ps().models
    assert [m.model for m in running] == [MODEL]


def test_version_and_root(daemon):
    assert httpx.get(daemon.url + "/").text == "Mullama is running"
    assert httpx.head(daemon.url + "/").status_code == 200
    assert httpx.get(daemon.url + "/api/version").json()["version"]


def test_errors_are_ollama_shaped(client, daemon):
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404
    assert "no-such-model" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.show("no-such-model")
    assert info.value.status_code == 404
    resp = httpx.post(
        daemon.url + "/api/generate", json={"model": MODEL, "options": {"temperature": "hot"}}
    )
    assert resp.status_code == 400
    assert set(resp.json()) == {"error"}
    resp = httpx.post(daemon.url + "/api/chat", content=b"{oops")
    assert resp.status_code == 400 and "JSON" in resp.json()["error"]
    long = "hello " * 3000
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model=MODEL, prompt=long, stream=False)
    assert info.value.status_code == 400


def test_images_on_text_model_is_400(client):
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model=MODEL, prompt="what is this?", images=[b"\x89PNG\r\n"], stream=False)
    assert info.value.status_code == 400
    assert "image" in info.value.error


SCHEMA = {
    "type": "object",
    "properties": {
        # Bounded strings: a 135M model sampled at 0.7 otherwise now and then writes one
        # string on until max_tokens (llguidance bounds a string without a rule per
        # character, unlike the GBNF converter).
        "name": {"type": "string", "maxLength": 60},
        "age": {"type": "integer"},
        "mood": {"type": "string", "enum": ["happy", "sad", "calm"]},
        "hobbies": {
            "type": "array",
            "items": {"type": "string", "maxLength": 40},
            "maxItems": 3,
        },
    },
    "required": ["name", "age", "mood", "hobbies"],
}

PEOPLE = [
    "a pirate",
    "a baker",
    "a robot",
    "a teacher",
    "a knight",
    "an astronaut",
    "a gardener",
    "a detective",
    "a painter",
    "a fisherman",
]


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_format_schema_output_validates(client, stream):
    for who in PEOPLE:
        kwargs = dict(
            model=MODEL,
            messages=[{"role": "user", "content": f"Describe {who} as JSON."}],
            format=SCHEMA,
            options={"temperature": 0.7, "seed": 3, "num_predict": 200},
        )
        if stream:
            text = "".join(p.message.content for p in client.chat(stream=True, **kwargs))
        else:
            text = client.chat(stream=False, **kwargs).message.content
        jsonschema.validate(json.loads(text), SCHEMA)


def test_ollama_format_json(client):
    text = client.generate(
        model=MODEL,
        prompt="Give me a JSON object about a cat.",
        format="json",
        stream=False,
        options={"temperature": 0, "num_predict": 120},
    ).response
    assert isinstance(json.loads(text), dict)


def test_openai_response_format_json_schema(openai_client):
    for who in PEOPLE:
        resp = openai_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Describe {who} as JSON."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": SCHEMA},
            },
            max_tokens=200,
            temperature=0.7,
            seed=5,
        )
        jsonschema.validate(json.loads(resp.choices[0].message.content), SCHEMA)
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in openai_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe a cook as JSON."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": SCHEMA},
            },
            max_tokens=200,
            stream=True,
        )
        if c.choices
    )
    jsonschema.validate(json.loads(streamed), SCHEMA)


def test_openai_json_object(openai_client):
    resp = openai_client.chat.completions.create(
        model=MODEL,
        # A prompt whose greedy JSON is short: "Reply in JSON with a greeting." ran past
        # max_tokens on one CPU (an ever-growing array) and not on another.
        messages=[{"role": "user", "content": 'Reply with a JSON object with one key "greeting".'}],
        response_format={"type": "json_object"},
        max_tokens=120,
        temperature=0,
    )
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "no-such-type"}}},
        {"$ref": "#/definitions/missing"},
        {"type": "string", "pattern": "(unclosed"},
        # Beyond llguidance's limits (1000 objects of 20 properties, 0.9 MB): refused at
        # compile time, in bounded work, instead of a worker busy for seconds.
        {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {f"k{j}_{i}": {"type": "string"} for j in range(20)},
                }
                for i in range(1000)
            ]
        },
    ],
    ids=["bad-type", "missing-ref", "bad-pattern", "too-large"],
)
def test_invalid_schema_is_400_and_worker_survives(openai_client, client, daemon, schema):
    pid = daemon.model_status()["pid"]
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    assert info.value.body["param"] == "response_format"
    if "properties" in schema:  # the message names the part that fails
        assert "properties.a" in info.value.body["message"]
    with pytest.raises(ollama.ResponseError) as oinfo:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], format=schema)
    assert oinfo.value.status_code == 400
    assert daemon.model_status()["pid"] == pid
    ok = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert ok.choices[0].message.content is not None
