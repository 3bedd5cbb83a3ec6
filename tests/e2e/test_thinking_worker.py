"""A reply's thinking in the real worker on the real tiny model (issue 34): SmolLM2 never
writes thinking markers by itself, so the engine writes them (``force_open``) and closes
the block when the budget is spent; the chunks carry the thinking apart from the answer,
with their token counts."""

from __future__ import annotations

import asyncio
import json

import pytest

from mullama.engine.client import WorkerClient
from mullama.engine.protocol import (
    GenerateRequest,
    SamplingParams,
    ThinkSyntax,
    TokenizeRequest,
    WorkerSpec,
)
from mullama.models.registry import embedded_model_path

# ChatML, as Qwen3 writes it: the block is the reply's to open, and thinking off is an
# empty block in the prompt.
QWEN_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)
ASK = [{"role": "user", "content": "Name a colour."}]


def _think(budget, **kw):
    return ThinkSyntax("<think>", "</think>", budget=budget, force_open=True, **kw)


def _request(rid, thinking, max_tokens=40, **kw):
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, thinking=thinking, **kw)
    return GenerateRequest(rid, params, messages=ASK, template=QWEN_LIKE)


@pytest.fixture(scope="module")
def replies():
    spec = WorkerSpec(
        name="smollm2:135m", path=str(embedded_model_path()), parallel=2, context_size=1024
    )

    async def run():
        client = WorkerClient(spec)
        await client.ensure_started()
        try:

            async def go(req):
                return [c async for c in client.generate(req)]

            async def count(text):
                tokens = await client.tokenize(
                    TokenizeRequest(id="t", text=text, add_special=False)
                )
                return len(tokens.tokens)

            schema = {
                "type": "object",
                "properties": {"colour": {"type": "string"}},
                "required": ["colour"],
            }
            prompt = await client.tokenize(
                TokenizeRequest(id="p", messages=ASK, template=QWEN_LIKE)
            )
            rendered = await client.detokenize(prompt.tokens)
            return {
                "budget8": await go(_request("b8", _think(8))),
                "budget0": await go(_request("b0", _think(0))),
                "schema": await go(_request("js", _think(8), json_schema=schema)),
                "plain": await go(_request("plain", None)),
                "prompt": await go(
                    GenerateRequest(
                        "pr",
                        SamplingParams(max_tokens=40, temperature=0.0, thinking=_think(8)),
                        prompt=rendered,
                        add_special=False,
                    )
                ),
                "open": await count("<think>\n"),
                "close": await count("\n</think>"),
                "close0": await count("</think>"),
            }
        finally:
            await client.close()

    return asyncio.run(run())


def _parts(chunks):
    return "".join(c.reasoning for c in chunks), "".join(c.text for c in chunks)


def test_a_budget_closes_the_block_and_the_model_answers(replies):
    chunks = replies["budget8"]
    thinking, answer = _parts(chunks)
    assert thinking.strip() and answer.strip()
    assert "<think>" not in thinking + answer and "</think>" not in thinking + answer
    last = chunks[-1]
    # the engine's opening, at most 8 sampled tokens, the engine's closing (its newline
    # when the thinking did not end with one)
    assert last.reasoning_tokens <= replies["open"] + 8 + replies["close"]
    assert last.reasoning_tokens >= replies["open"] + 8 + replies["close0"]
    assert last.reasoning_tokens < last.completion_tokens
    counts = [c.reasoning_tokens for c in chunks if c.completion_tokens]
    assert counts == sorted(counts)
    # the thinking comes first: no thinking text after the first answer text
    first_answer = next(i for i, c in enumerate(chunks) if c.text)
    assert not any(c.reasoning for c in chunks[first_answer:])


def test_a_zero_budget_closes_at_once(replies):
    chunks = replies["budget0"]
    thinking, answer = _parts(chunks)
    assert thinking == "" and answer.strip()
    assert chunks[-1].reasoning_tokens == replies["open"] + replies["close0"]


def test_a_schema_governs_the_answer_after_the_thinking(replies):
    thinking, answer = _parts(replies["schema"])
    assert thinking.strip()
    assert isinstance(json.loads(answer)["colour"], str)


def test_without_thinking_the_reply_is_as_before(replies):
    plain = replies["plain"]
    assert all(c.reasoning == "" and c.reasoning_tokens == 0 for c in plain)
    # a prompt's completion never has thinking: the same rendered text, the same reply
    prompt = replies["prompt"]
    assert _parts(prompt) == _parts(plain) and prompt[-1].reasoning_tokens == 0
    assert plain[-1].completion_tokens == prompt[-1].completion_tokens
