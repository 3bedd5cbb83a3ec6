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


def test_prompt_scoring_is_refused_by_name_until_it_exists(openai_client):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.completions.create(
            model=MODEL, prompt="x", max_tokens=1, echo=True, logprobs=1
        )
    assert info.value.body["param"] == "echo" and "scoring the prompt" in info.value.body["message"]
