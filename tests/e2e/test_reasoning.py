"""Reasoning models, across the APIs: the tiny model served under the real chat templates of
thinking models (Qwen3, DeepSeek-R1, gpt-oss, Ministral's ``[THINK]``) as custom models.

SmolLM2 never writes a thinking block by itself, so these models ask for thinking
(``think``) with a small budget (``reasoning_budget``): the engine opens the block, lets
the model think that many tokens, closes it, and the model answers. What a client
notices: the thinking apart from the answer, no marker in the thinking, at most the budget
of thinking, thinking off when asked, a JSON schema that holds the answer and not the
thinking, and the next turn reusing the cache when the template drops old thinking."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import ollama
import pytest

from tests.conftest import MODEL, Daemon

TEMPLATES = Path(__file__).parent.parent / "unit" / "templates"
BUDGET = 8
# name -> (template, custom-model parameters, the markers that must never show)
MODELS = {
    "smol-qwen3": ("Qwen-Qwen3-0.6B.jinja", {"think": True}, ("<think>", "</think>")),
    "smol-r1": (
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        {"think": True},
        ("<think>", "</think>"),
    ),
    "smol-gptoss": ("openai-gpt-oss-120b.jinja", {"think": True}, ("<|channel|>", "<|message|>")),
    "smol-magistral": (
        "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
        {"think": True},
        ("[THINK]", "[/THINK]"),
    ),
}
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    store = {"MULLAMA_CACHE_DIR": str(tmp_path_factory.mktemp("store"))}
    raw = ("--model-opt", "smol-r1-raw:reasoning_format=none")
    with Daemon("--parallel", "4", "--context-size", "2048", *raw, env=store).wait_healthy() as d:
        client = ollama.Client(host=d.url)
        for name, (source, params, _) in MODELS.items():
            client.create(model=name, from_=MODEL, template=(TEMPLATES / source).read_text(),
                          parameters={**params, "reasoning_budget": BUDGET}, stream=False)  # fmt: skip
        client.create(model="smol-r1-raw", from_=MODEL,
                      template=(TEMPLATES / MODELS["smol-r1"][0]).read_text(),
                      parameters={"think": True}, stream=False)  # fmt: skip
        client.create(model="smol-qwen3-free", from_=MODEL,
                      template=(TEMPLATES / MODELS["smol-qwen3"][0]).read_text(), stream=False)  # fmt: skip
        yield d


def _chat(d: Daemon, model: str, **kw) -> httpx.Response:
    body = {"model": model, "messages": ASK, "temperature": 0, "max_tokens": 48, **kw}
    return httpx.post(d.url + "/v1/chat/completions", json=body, timeout=120)


def _tokens(d: Daemon, text: str) -> int:
    body = {"model": MODEL, "prompt": text, "add_special_tokens": False}
    r = httpx.post(d.url + "/tokenize", json=body, timeout=30)
    return len(r.json()["tokens"])


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_budget_closes_the_thinking_and_the_model_answers(daemon, model):
    r = _chat(daemon, model)
    assert r.status_code == 200, r.text
    data = r.json()
    message, usage = data["choices"][0]["message"], data["usage"]
    thinking, answer = message["reasoning_content"], message["content"]
    assert thinking.strip() and answer.strip()
    assert _tokens(daemon, thinking) <= BUDGET + 1  # a token may split where the text joins
    for marker in MODELS[model][2]:  # (the tiny model may copy one later in its answer)
        assert marker not in thinking and not answer.lstrip().startswith(marker)
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert 0 < reasoning < usage["completion_tokens"]


def test_the_stream_adds_up_to_the_whole_answer(daemon):
    whole = _chat(daemon, "smol-qwen3").json()["choices"][0]["message"]
    body = {"model": "smol-qwen3", "messages": ASK, "temperature": 0, "max_tokens": 48,
            "stream": True}  # fmt: skip
    thinking = answer = ""
    order = []
    with httpx.stream("POST", daemon.url + "/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"]
            if delta.get("reasoning_content"):
                thinking += delta["reasoning_content"]
                order.append("thinking")
            if delta.get("content"):
                answer += delta["content"]
                order.append("answer")
    assert (thinking, answer) == (whole["reasoning_content"], whole["content"])
    assert order.index("answer") > max(i for i, o in enumerate(order) if o == "thinking")


def test_thinking_off_gives_no_thinking(daemon):
    off = {"chat_template_kwargs": {"enable_thinking": False}}
    message = _chat(daemon, "smol-qwen3", **off).json()["choices"][0]["message"]
    assert not message.get("reasoning_content") and message["content"].strip()
    message = _chat(daemon, "smol-qwen3", reasoning_effort="none").json()["choices"][0]["message"]
    assert not message.get("reasoning_content") and message["content"].strip()


def test_a_model_whose_template_has_no_thinking_format_answers_as_before(daemon):
    plain = _chat(daemon, MODEL).json()["choices"][0]["message"]
    asked = _chat(daemon, MODEL, reasoning_effort="high")
    assert asked.status_code == 200
    assert asked.json()["choices"][0]["message"]["content"] == plain["content"]
    assert "reasoning_content" not in plain
    # Not acted on: reported as ignored, as any hint is.
    assert "reasoning_effort" in asked.headers["Mullama-Ignored-Fields"]
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 8, "reasoning": {"effort": "low"}}
    r = httpx.post(daemon.url + "/v1/responses", json=body, timeout=120)
    assert r.status_code == 200 and "reasoning.effort" in r.headers["Mullama-Ignored-Fields"]
    assert not [item for item in r.json()["output"] if item["type"] == "reasoning"]
    r = _chat(daemon, "smol-qwen3", reasoning_effort="low")
    assert "reasoning_effort" not in r.headers.get("Mullama-Ignored-Fields", "")


def test_a_json_schema_holds_the_answer_not_the_thinking(daemon):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
              "required": ["city"], "additionalProperties": False}  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    r = _chat(daemon, "smol-qwen3", response_format=fmt, max_tokens=80)
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert message["reasoning_content"].strip()
    jsonschema.validate(json.loads(message["content"]), schema)


def test_the_next_turn_reuses_the_cache_when_the_template_drops_old_thinking(daemon):
    first = _chat(daemon, "smol-qwen3").json()
    message = first["choices"][0]["message"]
    history = [*ASK, {"role": "assistant", "content": message["content"],
                      "reasoning_content": message["reasoning_content"]},
               {"role": "user", "content": "And of Italy?"}]  # fmt: skip
    second = _chat(daemon, "smol-qwen3", messages=history)
    assert second.status_code == 200, second.text
    usage = second.json()["usage"]
    # Qwen3's template drops the first turn's thinking: the first prompt is all reused.
    assert usage["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"] - 1


def test_a_thinking_model_that_is_not_asked_to_think_answers_plainly(daemon):
    message = _chat(daemon, "smol-qwen3-free").json()["choices"][0]["message"]
    assert message["content"].strip() and not message.get("reasoning_content")


def test_reasoning_format_none_gives_the_raw_text_as_the_answer(daemon):
    separated = _chat(daemon, "smol-r1").json()["choices"][0]["message"]
    raw = _chat(daemon, "smol-r1-raw").json()
    message = raw["choices"][0]["message"]
    assert not message.get("reasoning_content")
    assert "completion_tokens_details" not in raw["usage"]
    # DeepSeek-R1's prompt opens the block: the raw answer is the thinking, unseparated.
    assert message["content"].strip().startswith(separated["reasoning_content"].strip())


def test_tokenize_counts_what_the_switch_renders(daemon):
    off = {"chat_template_kwargs": {"enable_thinking": False}}
    asked = _chat(daemon, "smol-qwen3", **off, max_tokens=1).json()["usage"]["prompt_tokens"]
    body = {"model": "smol-qwen3", "messages": ASK, "return_token_strs": True, **off}
    r = httpx.post(daemon.url + "/tokenize", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["count"] == asked
    assert "</think>" in "".join(r.json()["token_strs"])  # Qwen3's empty block: thinking off
    bad = {**body, "chat_template_kwargs": {"messages": []}}
    r = httpx.post(daemon.url + "/tokenize", json=bad, timeout=30)
    assert r.status_code == 400 and "chat_template_kwargs" in r.text
