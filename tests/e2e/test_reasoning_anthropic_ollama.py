"""Reasoning models on the Anthropic and Ollama APIs, through the ``anthropic`` SDK and the
``ollama`` client, unchanged: the tiny model served under Qwen3's real chat template (a
custom model), its thinking asked for with a small budget, so that the engine opens the
block, closes it when the budget is spent and the model answers. Anthropic gives a
``thinking`` block (with a signature) before the text, whole and streamed, and takes it
back in the history; Ollama gives ``thinking`` beside the content on chat and generate;
``/api/show`` lists the "thinking" capability of a model whose template has a format."""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx
import ollama
import pytest

from tests.conftest import MODEL, Daemon

TEMPLATE = Path(__file__).parent.parent / "unit" / "templates" / "Qwen-Qwen3-0.6B.jinja"
QWEN3 = "smol-qwen3"  # SmolLM2 under Qwen3's template
BUDGETED = "smol-qwen3-budget"  # the same, with a default thinking budget (Ollama's think)
BUDGET = 8
ASK = [{"role": "user", "content": "What is the capital of France?"}]
HEADER = "mullama-ignored-fields"
COLD = {"temperature": 0}  # the anthropic SDK has no temperature argument


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    store = {"MULLAMA_CACHE_DIR": str(tmp_path_factory.mktemp("store"))}  # its own models
    with Daemon("--parallel", "2", "--context-size", "2048", env=store).wait_healthy() as d:
        client = ollama.Client(host=d.url)
        template = TEMPLATE.read_text()
        client.create(model=QWEN3, from_=MODEL, template=template, stream=False)
        client.create(model=BUDGETED, from_=MODEL, template=template, stream=False,
                      parameters={"reasoning_budget": BUDGET})  # fmt: skip
        yield d


@pytest.fixture(scope="module")
def claude(daemon):
    client = anthropic.Anthropic(base_url=daemon.url, api_key="x", max_retries=0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def client(daemon):
    return ollama.Client(host=daemon.url)


# ---- Anthropic ------------------------------------------------------------------------


def _message(claude, **kw):
    kw = {"model": QWEN3, "max_tokens": 40, "messages": ASK, "extra_body": COLD,
          "thinking": {"type": "enabled", "budget_tokens": BUDGET}, **kw}  # fmt: skip
    return claude.messages.create(**kw)


def test_a_message_starts_with_its_thinking_block(claude):
    reply = _message(claude)
    thinking, text = reply.content
    assert thinking.type == "thinking" and thinking.thinking.strip()
    assert isinstance(thinking.signature, str) and thinking.signature
    assert text.type == "text" and text.text
    assert reply.usage.output_tokens <= 40


def test_a_streamed_message_adds_up_to_the_whole_one(claude):
    whole = _message(claude)
    with claude.messages.stream(
        model=QWEN3, max_tokens=40, messages=ASK, extra_body=COLD,
        thinking={"type": "enabled", "budget_tokens": BUDGET},
    ) as stream:  # fmt: skip
        events = list(stream)
        final = stream.get_final_message()
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in whole.content]
    blocks = [(e.type, e.index) for e in events if e.type.startswith("content_block_")]
    deltas = [e.delta.type for e in events if e.type == "content_block_delta" and e.index == 0]
    assert blocks[0] == ("content_block_start", 0)
    assert deltas[0] == "thinking_delta" and deltas[-1] == "signature_delta"
    assert set(deltas[:-1]) == {"thinking_delta"}
    # The thinking block ends before the text block starts, at the next index.
    assert blocks.index(("content_block_stop", 0)) < blocks.index(("content_block_start", 1))
    start = next(e for e in events if e.type == "content_block_start" and e.index == 0)
    assert start.content_block.model_dump() == {"type": "thinking", "thinking": "",
                                                "signature": ""}  # fmt: skip


def test_thinking_disabled_gives_no_thinking_block(claude):
    reply = _message(claude, thinking={"type": "disabled"})
    assert [b.type for b in reply.content] == ["text"]
    streamed = _message(claude, thinking={"type": "disabled"}, stream=True)
    assert "thinking" not in {e.content_block.type for e in streamed
                              if e.type == "content_block_start"}  # fmt: skip


def test_a_thinking_block_sent_back_goes_to_the_template(claude):
    first = _message(claude)
    sent_back = [block.model_dump() for block in first.content]
    turn = [*ASK, {"role": "assistant", "content": sent_back}]
    raw = claude.messages.with_raw_response.create(
        model=QWEN3, max_tokens=8, extra_body=COLD,
        messages=[*turn, {"role": "user", "content": "And of Italy?"}],
    )  # fmt: skip
    assert raw.parse().content and HEADER not in raw.headers
    # Qwen3's template writes the reasoning of a turn after the last question: counted.
    without = [*ASK, {"role": "assistant", "content": sent_back[1:]}]
    counted = claude.messages.count_tokens(model=QWEN3, messages=turn).input_tokens
    assert counted > claude.messages.count_tokens(model=QWEN3, messages=without).input_tokens


def test_redacted_thinking_is_dropped_and_reported(claude):
    redacted = {"type": "redacted_thinking", "data": "opaque"}
    messages = [*ASK, {"role": "assistant", "content": [redacted, {"type": "text", "text": "Paris."}]},
                {"role": "user", "content": "Thanks."}]  # fmt: skip
    raw = claude.messages.with_raw_response.create(model=QWEN3, max_tokens=4, messages=messages)
    assert raw.headers[HEADER] == "messages[].content[redacted_thinking]"


def test_thinking_on_a_model_without_a_format_is_reported(claude):
    raw = claude.messages.with_raw_response.create(
        model=MODEL, max_tokens=4, messages=ASK,
        thinking={"type": "enabled", "budget_tokens": BUDGET}, output_config={"effort": "low"},
    )  # fmt: skip
    assert [b.type for b in raw.parse().content] == ["text"]
    assert set(raw.headers[HEADER].split(",")) == {"thinking", "output_config.effort"}
    raw = claude.messages.with_raw_response.create(
        model=QWEN3, max_tokens=40, messages=ASK, extra_body=COLD,
        thinking={"type": "enabled", "budget_tokens": BUDGET}, output_config={"effort": "low"},
    )  # fmt: skip
    assert raw.parse().content[0].type == "thinking" and HEADER not in raw.headers


def test_adaptive_thinking_and_an_effort_are_acted_on_not_reported(claude):
    raw = claude.messages.with_raw_response.create(
        model=QWEN3, max_tokens=8, messages=ASK, thinking={"type": "adaptive"},
        output_config={"effort": "max"},
    )  # fmt: skip
    assert raw.parse().content and HEADER not in raw.headers
    unknown = claude.messages.with_raw_response.create(
        model=QWEN3, max_tokens=8, messages=ASK, output_config={"effort": "extreme"}
    )
    assert unknown.headers[HEADER] == "output_config.effort"


# ---- Ollama ---------------------------------------------------------------------------

OPTIONS = {"temperature": 0, "num_predict": 40}


@pytest.mark.parametrize("api", ["chat", "generate"])
def test_ollama_gives_the_thinking_whole_and_streamed(client, api):
    def ask(**kw):
        if api == "chat":
            return client.chat(BUDGETED, messages=ASK, think=True, options=OPTIONS, **kw)
        return client.generate(BUDGETED, ASK[0]["content"], think=True, options=OPTIONS, **kw)

    def parts(r):
        m = r.message if api == "chat" else r
        return (m.thinking or "", m.content if api == "chat" else m.response)

    thinking, text = parts(ask())
    assert thinking.strip() and text
    pieces = [parts(r) for r in ask(stream=True)]
    assert "".join(t for t, _ in pieces) == thinking
    assert "".join(c for _, c in pieces) == text
    assert all(c == "" for t, c in pieces if t)  # a line with thinking has no content


def test_ollama_think_takes_an_effort(client):
    # "high" asks no budget of its own: the model's default one closes the block.
    reply = client.chat(BUDGETED, messages=ASK, think="high", options=OPTIONS)
    assert reply.message.thinking and reply.message.content


def test_ollama_think_false_gives_no_thinking(client):
    reply = client.chat(BUDGETED, messages=ASK, think=False, options=OPTIONS)
    assert reply.message.thinking is None and reply.message.content
    done = client.generate(BUDGETED, ASK[0]["content"], think=False, options=OPTIONS)
    assert done.thinking is None and done.response


def test_ollama_thinking_sent_back_goes_to_the_template(client):
    first = client.chat(BUDGETED, messages=ASK, think=True, options=OPTIONS).message
    turn = {"role": "assistant", "content": first.content, "thinking": first.thinking}
    reply = client.chat(BUDGETED, messages=[*ASK, turn, {"role": "user", "content": "Italy?"}],
                        think=False, options={**OPTIONS, "num_predict": 4})  # fmt: skip
    assert reply.message.content is not None
    # Qwen3's template writes the reasoning of a turn after the last question: a long
    # thinking no request had is computed (never found in the cache), the rest is short.
    long = " ".join(f"zebra{i}" for i in range(40))
    last = client.chat(BUDGETED, messages=[*ASK, {**turn, "thinking": long}],
                       options={"num_predict": 1})  # fmt: skip
    assert last.prompt_eval_count >= 40
    plain = client.chat(BUDGETED, messages=[*ASK, {**turn, "thinking": None}],
                        options={"num_predict": 1})  # fmt: skip
    assert plain.prompt_eval_count < 40


def test_ollama_think_on_a_model_without_a_format_is_refused(client):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(MODEL, messages=ASK, think=True, options=OPTIONS)
    assert err.value.status_code == 400 and "thinking" in err.value.error


def test_show_lists_thinking_for_a_thinking_template_only(client):
    assert "thinking" in client.show(QWEN3).capabilities
    assert "thinking" not in client.show(MODEL).capabilities


# ---- llama-server's /completion -------------------------------------------------------


def test_llama_servers_completion_stays_raw_text(daemon):
    # A prompt completion, as llama-server's: no chat template, so no thinking read out of
    # it, even after a prompt that opens the block (split, all of it would be thinking).
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    body = {"model": QWEN3, "prompt": prompt, "n_predict": 8, "temperature": 0}
    reply = httpx.post(daemon.url + "/completion", json=body, timeout=60).json()
    assert reply["content"] and "reasoning_content" not in reply
