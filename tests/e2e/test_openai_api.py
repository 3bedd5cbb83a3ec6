"""The OpenAI API, end to end: the real daemon, the real model, the official client."""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import openai
import pytest

from tests.conftest import MODEL, Daemon

CHAT = [{"role": "user", "content": "Write a short poem about the sea."}]


def test_chat_non_stream(openai_client):
    resp = openai_client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=24, temperature=0
    )
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 5
    assert 0 < resp.usage.completion_tokens <= 24
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.model == MODEL


def test_chat_max_tokens_gives_length(openai_client):
    resp = openai_client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_completion_tokens=3,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 3


def test_ignore_eos_generates_text_past_the_models_end(openai_client):
    # A raw completion whose assistant reply is already complete: greedy picks an
    # end-of-generation token first (a story prompt did on one CPU and not on another).
    # ignore_eos must go on with real text to max_tokens, never emitting end tokens as
    # empty pieces.
    prompt = (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help you today?"
    )
    plain = openai_client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=8, temperature=0
    )
    assert plain.choices[0].finish_reason == "stop"
    assert plain.usage.completion_tokens == 0
    stream = openai_client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8
    # Every one of the 8 tokens is visible text (English: one piece per token).
    assert len(pieces) == 8, pieces


def test_chat_stream_with_usage(openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert text.strip()
    assert finishes in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage.completion_tokens > 0 and usage.prompt_tokens > 0


def test_temperature_zero_stream_equals_non_stream(openai_client):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=40, temperature=0)
    full = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in openai_client.chat.completions.create(stream=True, **kwargs)
        if c.choices
    )
    assert streamed == full


def test_same_seed_same_text(openai_client):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=30, temperature=0.8, seed=1234)
    a = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    b = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    others = {
        openai_client.chat.completions.create(**{**kwargs, "seed": s}).choices[0].message.content
        for s in (1, 2, 3)
    }
    assert a == b
    assert len(others | {a}) > 1, "different seeds should not all give the same text"


def test_n_choices_are_separate_sequences(openai_client):
    resp = openai_client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=16, temperature=1.0, seed=7, n=3
    )
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert all(c.message.content for c in resp.choices)
    assert len({c.message.content for c in resp.choices}) > 1


def test_stop_strings_never_appear(openai_client):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=60, temperature=0)
    full = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    words = full.split()
    assert len(words) > 6
    # A stop string spanning several tokens, from the middle of the greedy output.
    stop = " ".join(words[3:5])
    cut = full[: full.index(stop)]
    resp = openai_client.chat.completions.create(stop=[stop, "zzzz-never"], **kwargs)
    assert resp.choices[0].message.content == cut
    assert resp.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in openai_client.chat.completions.create(stream=True, stop=stop, **kwargs)
        if c.choices
    )
    assert stop not in streamed
    assert streamed == cut


def test_non_ascii_arrives_intact(openai_client):
    prompt = "Café, crème brûlée, naïve, 日本語, emoji 😀🎉. Répète: café 😀"
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=60,
        temperature=0,
    )
    full = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    pieces = [
        c.choices[0].delta.content or ""
        for c in openai_client.chat.completions.create(stream=True, **kwargs)
        if c.choices
    ]
    streamed = "".join(pieces)
    assert streamed == full
    assert "\ufffd" not in full
    assert any(ord(ch) > 127 for ch in full), full
    # Completions echo the prompt back byte for byte, multi-byte characters included.
    resp = openai_client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, echo=True)
    assert resp.choices[0].text.startswith(prompt)


def test_completions_string_and_list(openai_client):
    one = openai_client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert one.object == "text_completion"
    assert one.choices[0].text
    many = openai_client.completions.create(
        model=MODEL, prompt=["One, two, three,", "Red, green,"], max_tokens=6, temperature=0
    )
    assert [c.index for c in many.choices] == [0, 1]
    assert all(c.text for c in many.choices)
    assert many.choices[0].text != many.choices[1].text
    streamed = "".join(
        c.choices[0].text
        for c in openai_client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
        )
    )
    assert streamed == one.choices[0].text


def test_embeddings(openai_client):
    a = openai_client.embeddings.create(model=MODEL, input="The cat sat on the mat.")
    b = openai_client.embeddings.create(model=MODEL, input="The cat sat on the mat.")
    both = openai_client.embeddings.create(
        model=MODEL, input=["The cat sat on the mat.", "Quarterly revenue grew by 4%."]
    )
    va, vb = a.data[0].embedding, b.data[0].embedding
    assert len(va) == 576
    assert va == vb
    assert math.isclose(sum(x * x for x in va), 1.0, rel_tol=1e-3)
    assert [d.index for d in both.data] == [0, 1]
    assert both.data[0].embedding == pytest.approx(va, abs=1e-5)
    assert both.data[1].embedding != pytest.approx(va, abs=1e-3)
    assert a.usage.prompt_tokens > 0


def test_models_list(openai_client):
    ids = [m.id for m in openai_client.models.list()]
    assert ids == [MODEL]
    assert openai_client.models.retrieve(MODEL).id == MODEL


async def _first_token_and_finish(
    client, prompt: str, max_tokens: int, streaming: asyncio.Event | None = None
) -> tuple[float, float]:
    first = None
    stream = await client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0.7,
        seed=1,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.monotonic()
            if streaming is not None:
                streaming.set()
    return first, time.monotonic()


def test_eight_concurrent_streams_interleave(daemon):
    async def run():
        async_openai_client = openai.AsyncOpenAI(
            base_url=daemon.url + "/v1", api_key="unused", max_retries=0, timeout=120
        )
        first_streaming = asyncio.Event()
        tasks = [
            asyncio.create_task(
                _first_token_and_finish(async_openai_client, "Story number 0:", 96, first_streaming)
            )
        ]
        # The other seven start while the first generates (the timeout: a hang guard).
        await asyncio.wait_for(first_streaming.wait(), 120)
        for i in range(1, 8):
            tasks.append(
                asyncio.create_task(
                    _first_token_and_finish(async_openai_client, f"Story number {i}:", 96)
                )
            )
        try:
            return await asyncio.gather(*tasks)
        finally:
            await async_openai_client.close()

    results = asyncio.run(run())
    first_finish = results[0][1]
    last_first_token = results[7][0]
    # The 8th request started streaming while the 1st was still generating.
    assert last_first_token < first_finish


def test_disconnect_frees_the_sequence(daemon):
    before = daemon.model_status()
    with httpx.Client(timeout=60) as client:
        with client.stream(
            "POST",
            daemon.url + "/v1/completions",
            json={
                "model": MODEL,
                "prompt": "Once upon a time",
                "max_tokens": 1500,
                "stream": True,
                "ignore_eos": True,
            },
        ) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            for _ in range(5):
                next(lines)
            assert daemon.model_status()["active_sequences"] >= 1
    # The stream was closed after a few tokens: the slot is freed and generation stops,
    # far short of the 1500 tokens asked for.
    from tests.conftest import wait_for

    wait_for(lambda: daemon.model_status()["active_sequences"] == 0, timeout=120)
    after = daemon.model_status()
    assert after["pid"] == before["pid"]
    assert after["tokens_generated"] - before["tokens_generated"] < 1000


def test_abandoned_non_stream_request_is_cancelled(daemon):
    from tests.conftest import wait_for

    before = daemon.model_status()
    log_start = len(daemon.log())
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            daemon.url + "/v1/completions",
            json={"model": MODEL, "prompt": "Once", "max_tokens": 1500, "ignore_eos": True},
            timeout=httpx.Timeout(60, read=1.5),
        )
    wait_for(lambda: daemon.model_status()["active_sequences"] == 0, timeout=120)
    after = daemon.model_status()
    assert after["tokens_generated"] - before["tokens_generated"] < 1000
    # A client leaving is normal: counted as 499, no traceback in the log.
    wait_for(lambda: '"status":499' in daemon.log()[log_start:])
    assert "Traceback" not in daemon.log()[log_start:]


def test_health(daemon):
    body = httpx.get(daemon.url + "/health").json()
    assert body["status"] == "ok"
    assert body["models_loaded"] == 1
    assert body["version"]
    assert httpx.get(daemon.url + "/v1/health").json()["status"] == "ok"


def test_openai_client_raises_not_found(openai_client):
    with pytest.raises(openai.NotFoundError) as info:
        openai_client.chat.completions.create(model="no-such-model", messages=CHAT)
    assert info.value.body["code"] == "model_not_found"


def test_shared_kv_pool_mode_serves_concurrent_requests():
    # --kv-unified: one KV pool for all sequences instead of one stream per sequence.
    d = Daemon("--kv-unified", "--parallel", "2", "--context-size", "256").wait_healthy()
    try:
        client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0, timeout=120)

        def alone():
            # A raw prompt that shares no prefix with the chat requests: computed whole,
            # alone in its steps, before and after the burst (same batch shapes: llama.cpp
            # is not batch-invariant, so a reply computed beside other sequences may take
            # another word where two tokens are close).
            reply = client.completions.create(
                model=MODEL, prompt="The three primary colours are", max_tokens=24, temperature=0
            )
            return reply.choices[0].text

        before = alone()

        async def run():
            aclient = openai.AsyncOpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
            try:
                return await asyncio.gather(
                    *(
                        aclient.chat.completions.create(
                            model=MODEL,
                            messages=[{"role": "user", "content": f"Count to {i + 3}."}],
                            max_tokens=40,
                            temperature=0,
                            extra_body={"ignore_eos": True},
                        )
                        for i in range(4)
                    )
                )
            finally:
                await aclient.close()

        replies = asyncio.run(run())
        assert [r.usage.completion_tokens for r in replies] == [40] * 4
        assert all(r.choices[0].message.content.strip() for r in replies)
        # More requests than slots waited their turn in the one pool, whose cells still
        # hold their histories; a new sequence sees none of them: the same answer as on
        # the empty pool (temperature 0).
        assert before.strip() and alone() == before
        status = d.model_status()
        assert status["kv_unified"] is True and status["kv_cache_size"] == 512
        client.close()
    finally:
        d.stop()
