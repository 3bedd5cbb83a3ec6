"""Token-id prompts on /v1/completions and the tokenizer endpoints (vLLM's shapes), as
lm-evaluation-harness and other token-level clients use them."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import MODEL


def _post(daemon, path: str, body: dict) -> httpx.Response:
    return httpx.post(daemon.url + path, json=body, timeout=120)


def _tokens(daemon, text: str) -> list[int]:
    resp = _post(daemon, "/tokenize", {"model": MODEL, "prompt": text})
    assert resp.status_code == 200
    return resp.json()["tokens"]


def test_tokenize_detokenize_round_trip(daemon):
    text = "Hello world, café 😀"
    body = _post(daemon, "/v1/tokenize", {"prompt": text, "return_token_strs": True}).json()
    assert body["count"] == len(body["tokens"]) > 3
    assert body["max_model_len"] == 2048
    # Each token's own text, in order; the emoji is split over byte tokens, none of
    # which is a character alone.
    assert "".join(body["token_strs"]).startswith("Hello world, café ")
    assert len(body["token_strs"]) == body["count"]
    back = _post(daemon, "/detokenize", {"model": MODEL, "tokens": body["tokens"]}).json()
    assert back == {"prompt": text}


def test_tokenized_chat_is_exactly_what_a_chat_request_feeds_the_model(daemon, openai_client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    tokenized = _post(daemon, "/tokenize", {"model": MODEL, "messages": messages}).json()
    reply = openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert tokenized["count"] == reply.usage.prompt_tokens
    text = _post(daemon, "/detokenize", {"tokens": tokenized["tokens"]}).json()["prompt"]
    assert text.endswith("<|im_start|>assistant\n")  # the generation prompt is there
    no_gen = _post(
        daemon, "/tokenize", {"messages": messages, "add_generation_prompt": False}
    ).json()
    assert no_gen["count"] < tokenized["count"]


def test_token_prompts_generate_like_their_text(openai_client, daemon):
    ids = _tokens(daemon, "The capital of France is")
    by_text = openai_client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0
    )
    by_ids = openai_client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(ids)
    echoed = openai_client.completions.create(
        model=MODEL, prompt=ids, max_tokens=6, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "The capital of France is" + by_text.choices[0].text


def test_a_batch_of_token_prompts_answers_each_by_index(openai_client, daemon):
    a, b = _tokens(daemon, "One, two,"), _tokens(daemon, "Red, green,")
    out = openai_client.completions.create(model=MODEL, prompt=[a, b], max_tokens=4, temperature=0)
    assert [c.index for c in out.choices] == [0, 1]
    alone = openai_client.completions.create(model=MODEL, prompt=b, max_tokens=4, temperature=0)
    assert out.choices[1].text == alone.choices[0].text
    assert out.usage.prompt_tokens == len(a) + len(b)


@pytest.mark.parametrize(
    ("prompt", "param"),
    [([1, 49152], "prompt"), ([5, -1], "prompt"), ([[1, 2], []], "prompt"), ([], "prompt")],
)
def test_token_ids_outside_the_vocabulary_are_refused(openai_client, prompt, param):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    assert info.value.body["param"] == param


def test_tokenizer_endpoints_refuse_bad_input_in_openai_shape(daemon):
    bad = [
        ("/detokenize", {"tokens": [0, 10**6]}, "tokens"),
        ("/detokenize", {"tokens": ["a"]}, "tokens[0]"),
        ("/tokenize", {"prompt": "x", "chat_template": "{{ x }}"}, "chat_template"),
        ("/tokenize", {"model": "no-such-model", "prompt": "x"}, "model"),
    ]
    for path, body, param in bad:
        resp = _post(daemon, path, body)
        assert resp.status_code in (400, 404), (path, body, resp.text)
        assert resp.json()["error"]["param"] == param, resp.text
    both = _post(
        daemon, "/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "y"}]}
    )
    assert both.status_code == 400 and "exactly one of prompt and messages" in both.text
    assert both.json()["error"]["param"] is None  # the rule is about the whole body


def test_tokenizer_info_names_the_special_tokens_and_template(daemon):
    info = httpx.get(daemon.url + "/tokenizer_info", timeout=60).json()
    assert info["model"] == MODEL and info["vocab_size"] == 49152
    assert info["eos_token"] == "<|im_end|>" and info["add_bos_token"] is False
    assert "<|im_start|>" in info["chat_template"] and info["model_max_length"] == 2048
    assert httpx.get(daemon.url + "/v1/tokenizer_info", params={"model": MODEL}).json() == info
