"""Reasoning on the OpenAI-shaped APIs, through the openai SDK unchanged: the tiny model
served under Qwen3's real chat template (``<think>``, switch ``enable_thinking``) as a
custom model whose thinking, when asked for, has a budget of a few tokens.

SmolLM2 never writes ``<think>`` by itself: a request that asks for thinking
(``reasoning_effort``, ``chat_template_kwargs`` ``enable_thinking``, Responses'
``reasoning.effort``) has the engine open the block, the model think up to the budget, the
engine close it, and the model answer. What a client reads: the thinking as
``reasoning_content`` (and ``reasoning``) apart from the answer, whole and streamed alike;
its tokens in ``reasoning_tokens``; none of it when thinking is off; on the Responses API
a reasoning item before the message, which can be sent back on the next turn."""

from __future__ import annotations

from pathlib import Path

import ollama
import openai
import pytest

from tests.conftest import MODEL, Daemon

TEMPLATE = Path(__file__).parent.parent / "unit" / "templates" / "Qwen-Qwen3-0.6B.jinja"
QWEN3 = "smol-qwen3-think"
BUDGET = 8  # the model's thinking budget, in tokens
ASK = [{"role": "user", "content": "Tell me about the history of Paris."}]
ON = {"chat_template_kwargs": {"enable_thinking": True}}
OFF = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    store = {"MULLAMA_CACHE_DIR": str(tmp_path_factory.mktemp("store"))}  # its own models
    with Daemon("--parallel", "2", "--context-size", "2048", env=store).wait_healthy() as d:
        client = ollama.Client(host=d.url)
        client.create(model=QWEN3, from_=MODEL, template=TEMPLATE.read_text(),
                      parameters={"reasoning_budget": BUDGET}, stream=False)  # fmt: skip
        yield d


@pytest.fixture(scope="module")
def oai(daemon):
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0)
    yield client
    client.close()


def _chat(oai: openai.OpenAI, extra: dict | None = None, **kw):
    kw = {"model": QWEN3, "messages": ASK, "temperature": 0, "max_tokens": 40, **kw}
    return oai.chat.completions.create(**kw, extra_body=extra)


# ---- chat completions ----------------------------------------------------------------


@pytest.mark.parametrize("asked", [{"reasoning_effort": "high"}, {"extra": ON}])
def test_a_whole_answer_gives_the_thinking_then_the_answer(oai, asked):
    resp = _chat(oai, **asked)
    message, usage = resp.choices[0].message, resp.usage
    thinking = message.model_extra["reasoning_content"]
    assert thinking.strip() and message.content.strip()
    assert message.model_extra["reasoning"] == thinking
    # The block's markers are the engine's: never shown (the tiny model, having read them,
    # may write a "</think>" of its own later in its answer: that is its text).
    assert "<think>" not in thinking and "</think>" not in thinking
    assert not message.content.startswith(("<think>", "</think>", "\n"))
    assert usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert 0 < reasoning < usage.completion_tokens  # a part of them: the answer's are not


def test_the_stream_gives_the_thinking_first_and_adds_up_to_the_whole_answer(oai):
    whole = _chat(oai, reasoning_effort="high")
    stream = _chat(oai, reasoning_effort="high", stream=True,
                   stream_options={"include_usage": True})  # fmt: skip
    thinking = answer = ""
    order, usage = [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            if extra.get("reasoning_content"):
                assert extra["reasoning"] == extra["reasoning_content"]
                assert not choice.delta.content
                thinking += extra["reasoning_content"]
                order.append("thinking")
            if choice.delta.content:
                answer += choice.delta.content
                order.append("answer")
    message = whole.choices[0].message
    assert (thinking, answer) == (message.model_extra["reasoning_content"], message.content)
    assert order == sorted(order, reverse=True) and order[0] == "thinking"  # then the answer
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == (
        whole.usage.completion_tokens_details.reasoning_tokens
    )


@pytest.mark.parametrize("off", [{"reasoning_effort": "none"}, {"extra": OFF}])
def test_thinking_off_gives_no_reasoning(oai, off):
    resp = _chat(oai, **off)
    message = resp.choices[0].message
    assert message.content.strip()
    assert "reasoning_content" not in (message.model_extra or {})
    assert "reasoning" not in (message.model_extra or {})
    details = resp.usage.completion_tokens_details
    assert details is None or not details.reasoning_tokens
    for chunk in _chat(oai, stream=True, **off):
        for choice in chunk.choices:
            assert "reasoning_content" not in (choice.delta.model_extra or {})


def test_an_unknown_effort_is_refused_by_name(oai):
    with pytest.raises(openai.BadRequestError) as err:
        _chat(oai, extra={"reasoning_effort": "maximal"})
    assert err.value.body["param"] == "reasoning_effort"


def test_earlier_thinking_sent_back_is_accepted_under_either_name(oai):
    first = _chat(oai, reasoning_effort="high").choices[0].message
    for key in ("reasoning_content", "reasoning"):
        history = [*ASK, {"role": "assistant", "content": first.content,
                          key: first.model_extra["reasoning_content"]},
                   {"role": "user", "content": "And of Italy?"}]  # fmt: skip
        raw = oai.chat.completions.with_raw_response.create(
            model=QWEN3, messages=history, temperature=0, max_tokens=16
        )
        assert raw.parse().choices[0].message.content is not None
        assert "mullama-ignored-fields" not in raw.headers  # read, not ignored


# ---- Responses ---------------------------------------------------------------------------


def _respond(oai: openai.OpenAI, **kw):
    kw = {"model": QWEN3, "input": "Tell me about the history of Paris.", "temperature": 0,
          "max_output_tokens": 40, "reasoning": {"effort": "high"}, **kw}  # fmt: skip
    return oai.responses.create(**kw)


def test_a_response_has_a_reasoning_item_before_its_message(oai):
    resp = _respond(oai)
    assert [item.type for item in resp.output] == ["reasoning", "message"]
    reasoning, message = resp.output
    assert reasoning.id.startswith("rs_") and reasoning.summary == []
    assert reasoning.content and reasoning.content[0].type == "reasoning_text"
    assert reasoning.content[0].text.strip() and resp.output_text.strip()
    assert resp.reasoning is not None and resp.reasoning.effort == "high"
    reasoning_tokens = resp.usage.output_tokens_details.reasoning_tokens
    assert 0 < reasoning_tokens <= resp.usage.output_tokens


def test_a_streamed_response_writes_the_reasoning_item_first_and_adds_up(oai):
    whole = _respond(oai)
    events = list(_respond(oai, stream=True))
    kinds = [e.type for e in events]
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [e.item.type for e in added] == ["reasoning", "message"]
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    (done,) = [e for e in events if e.type == "response.reasoning_text.done"]
    assert deltas == done.text == whole.output[0].content[0].text
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    final = events[-1].response
    assert final.output[0].content[0].text == deltas and final.output_text == whole.output_text


def test_thinking_off_gives_no_reasoning_item(oai):
    resp = _respond(oai, reasoning={"effort": "none"})
    assert [item.type for item in resp.output] == ["message"]
    assert resp.usage.output_tokens_details.reasoning_tokens == 0


def test_a_reasoning_item_sent_back_is_accepted(oai):
    first = _respond(oai, store=False)
    items = [{"role": "user", "content": "Tell me about the history of Paris."},
             *[item.model_dump(exclude_none=True) for item in first.output],
             {"role": "user", "content": "And of Italy?"}]  # fmt: skip
    raw = oai.responses.with_raw_response.create(
        model=QWEN3, input=items, temperature=0, max_output_tokens=16
    )
    assert raw.parse().output_text is not None
    assert "mullama-ignored-fields" not in raw.headers
    # And as a stored response's, by its id.
    stored = _respond(oai)
    follow = _respond(oai, previous_response_id=stored.id, input="And of Italy?")
    assert follow.output[-1].type == "message"
