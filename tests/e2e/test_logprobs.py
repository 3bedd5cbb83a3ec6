"""Log probabilities through the openai SDK: chat (content entries with bytes and top
alternatives) and legacy completions (tokens, token_logprobs, top_logprobs, text_offset),
streamed and not."""

from __future__ import annotations

import math

import openai
import pytest

from tests.conftest import MODEL

MSG = [{"role": "user", "content": "Name three colours."}]


def _chat(client, **kw):
    return client.chat.completions.create(model=MODEL, messages=MSG, **{"max_tokens": 12, **kw})


def test_chat_logprobs_describe_every_token_of_the_reply(openai_client):
    out = _chat(openai_client, temperature=0, logprobs=True, top_logprobs=3)
    choice = out.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == out.usage.completion_tokens == 12
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert bytes(e.bytes).decode() == e.token and e.logprob <= 0
        alts = [a.logprob for a in e.top_logprobs]
        assert len(alts) == 3 and alts == sorted(alts, reverse=True)
        assert sum(math.exp(a) for a in alts) <= 1 + 1e-6
        # Greedy decoding picks the most likely token: it is the first alternative.
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == e.logprob


def test_logprobs_are_the_models_distribution_not_the_samplers(openai_client):
    greedy = _chat(openai_client, temperature=0, logprobs=True, top_logprobs=5, max_tokens=1)
    hot = _chat(
        openai_client,
        temperature=1.5,
        seed=3,
        logprobs=True,
        top_logprobs=5,
        max_tokens=1,
        presence_penalty=1.0,
    )
    first = [
        (a.token, round(a.logprob, 5)) for a in greedy.choices[0].logprobs.content[0].top_logprobs
    ]
    again = [
        (a.token, round(a.logprob, 5)) for a in hot.choices[0].logprobs.content[0].top_logprobs
    ]
    assert first == again  # temperature and penalties do not change what is reported


def test_streamed_chat_logprobs_add_up_to_the_whole_answer(openai_client):
    whole = _chat(openai_client, temperature=0, logprobs=True, top_logprobs=2)
    stream = _chat(openai_client, temperature=0, logprobs=True, top_logprobs=2, stream=True)
    entries, text = [], ""
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs is not None:
                entries += choice.logprobs.content
    assert text == whole.choices[0].message.content
    assert [(e.token, e.logprob) for e in entries] == [
        (e.token, e.logprob) for e in whole.choices[0].logprobs.content
    ]


def test_completion_logprobs_in_the_legacy_shape(openai_client):
    out = openai_client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=8, temperature=0, logprobs=2
    )
    choice = out.choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == 8
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(len(top) <= 2 and lp.tokens[i] in top for i, top in enumerate(lp.top_logprobs))
    assert [
        choice.text[off:].startswith(tok)
        for off, tok in zip(lp.text_offset, lp.tokens, strict=True)
    ] == [True] * 8
    stream = openai_client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=8, temperature=0, logprobs=2, stream=True
    )
    tokens, offsets = [], []
    for chunk in stream:
        for c in chunk.choices:
            if c.logprobs is not None:
                tokens += c.logprobs.tokens
                offsets += c.logprobs.text_offset
    assert tokens == lp.tokens and offsets == lp.text_offset


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_bad_chat_logprob_requests_are_refused(openai_client, kw, param):
    with pytest.raises(openai.BadRequestError) as info:
        _chat(openai_client, **kw)
    assert info.value.body["param"] == param


def test_prompt_scoring_gives_every_prompt_token_its_logprob(openai_client, daemon):
    """lm-evaluation-harness's loglikelihood: echo, max_tokens 0, batches of prompts."""
    gen = openai_client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=3, temperature=0, logprobs=1
    )
    whole = "The sky is" + gen.choices[0].text
    scored = openai_client.completions.create(
        model=MODEL, prompt=[whole, "Paris is in"], max_tokens=0, echo=True, logprobs=1
    )
    assert [c.index for c in scored.choices] == [0, 1]
    first = scored.choices[0]
    assert first.text == whole and first.finish_reason == "length"
    lp = first.logprobs
    assert "".join(lp.tokens) == whole
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert scored.usage.completion_tokens == 0
    # The generated tokens, scored as prompt, get the logprobs they were generated with
    # (up to the batch-shape noise of llama.cpp's kernels; see the next test).
    tail = lp.token_logprobs[-3:]
    assert all(
        abs(a - b) < 0.5 for a, b in zip(tail, gen.choices[0].logprobs.token_logprobs, strict=True)
    )


def test_long_prompts_are_scored_in_chunks_without_losing_a_token(openai_client, daemon):
    import httpx

    text = " ".join(f"word{i}" for i in range(120))  # well over one 64-token chunk
    ids = httpx.post(daemon.url + "/tokenize", json={"prompt": text}).json()["tokens"]
    out = openai_client.completions.create(
        model=MODEL, prompt=[ids, ids[:10]], max_tokens=0, echo=True, logprobs=0
    )
    long, short = out.choices[0].logprobs, out.choices[1].logprobs
    assert len(long.token_logprobs) == len(ids) > 128
    assert all(v is not None and v <= 0 for v in long.token_logprobs[1:])
    # A prefix scores about the same alone as inside the long prompt (causal attention).
    # Not exactly: llama.cpp's kernels are not batch-invariant, so a logprob moves by up
    # to ~0.2 nats with the rows it is computed among (0.22 measured); a token scored
    # against the wrong context would be off by several nats.
    assert all(
        abs(a - b) < 0.5
        for a, b in zip(short.token_logprobs[1:], long.token_logprobs[1:10], strict=True)
    )


def test_max_tokens_zero_without_echo_is_refused(openai_client):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.completions.create(model=MODEL, prompt="x", max_tokens=0)
    assert info.value.body["param"] == "max_tokens"


def test_streamed_echo_starts_with_the_prompt(openai_client):
    stream = openai_client.completions.create(
        model=MODEL, prompt="One, two,", max_tokens=3, temperature=0, echo=True, stream=True
    )
    text = "".join(c.choices[0].text for c in stream if c.choices)
    whole = openai_client.completions.create(
        model=MODEL, prompt="One, two,", max_tokens=3, temperature=0, echo=True
    )
    assert text == whole.choices[0].text and text.startswith("One, two,")


def test_ollama_logprobs_through_the_ollama_client(daemon):
    import ollama

    client = ollama.Client(host=daemon.url, timeout=120)
    opts = {"temperature": 0, "num_predict": 6}
    chat = client.chat(model=MODEL, messages=MSG, options=opts, logprobs=True, top_logprobs=2)
    assert len(chat.logprobs) == chat.eval_count == 6
    assert "".join(e.token for e in chat.logprobs) == chat.message.content
    assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in chat.logprobs)
    streamed = list(
        client.generate(model=MODEL, prompt="The sky is", options=opts, logprobs=True, stream=True)
    )
    whole = client.generate(model=MODEL, prompt="The sky is", options=opts, logprobs=True)
    tokens = [e.token for part in streamed for e in (part.logprobs or [])]
    assert tokens == [e.token for e in whole.logprobs] and "".join(tokens) == whole.response
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model=MODEL, messages=MSG, top_logprobs=2)
    assert info.value.status_code == 400 and "top_logprobs" in info.value.error
