"""The bounds on request knobs (engine/limits.py): the same limit on every API, each
answered in the API's own words for its own field name, and the worker's clamps."""

from __future__ import annotations

from pathlib import Path

import pytest

from mullama.api.anthropic.schemas import MessagesRequest
from mullama.api.body import validate
from mullama.api.llamaserver import CompletionBody
from mullama.api.ollama.schemas import ChatBody, EmbedBody, GenerateBody
from mullama.api.openai.schemas import ChatCompletionRequest, CompletionRequest
from mullama.engine import limits
from mullama.engine.protocol import SamplingParams
from mullama.errors import ContextLengthExceeded, InvalidParameter
from mullama.models.custom import parse_definition

MSG = [{"role": "user", "content": "hi"}]
MANY = ["x"] * (limits.MAX_STOPS + 1)
LONG = "y" * (limits.MAX_STOP_CHARS + 1)

# Each API's request with its stop field set to ``stop``, and the name it gives that field.
STOP_BODIES = [
    (ChatCompletionRequest, lambda s: {"model": "m", "messages": MSG, "stop": s}, "stop"),
    (CompletionRequest, lambda s: {"model": "m", "prompt": "p", "stop": s}, "stop"),
    (MessagesRequest, lambda s: {"model": "m", "max_tokens": 4, "messages": MSG,
                                 "stop_sequences": s}, "stop_sequences"),
    (CompletionBody, lambda s: {"prompt": "p", "stop": s}, "stop"),
    (GenerateBody, lambda s: {"model": "m", "options": {"stop": s}}, "options.stop"),
    (ChatBody, lambda s: {"model": "m", "messages": MSG, "options": {"stop": s}}, "options.stop"),
]  # fmt: skip


def _refused(cls, body) -> InvalidParameter:
    with pytest.raises(InvalidParameter) as info:
        validate(cls, body)
    return info.value


@pytest.mark.parametrize(("cls", "body", "field"), STOP_BODIES)
def test_too_many_stop_strings_are_refused_naming_the_apis_field(cls, body, field):
    err = _refused(cls, body(["x"] * 300_000))
    assert err.param == field
    assert f"at most {limits.MAX_STOPS} stop strings, not 300000" in err.message
    validate(cls, body(["x"] * limits.MAX_STOPS))  # the limit itself is taken


@pytest.mark.parametrize(("cls", "body", "field"), STOP_BODIES)
def test_a_stop_string_over_the_length_is_refused(cls, body, field):
    err = _refused(cls, body(["ok", LONG]))
    assert err.param == field
    assert f"{len(LONG)} characters; at most {limits.MAX_STOP_CHARS}" in err.message
    validate(cls, body(["ok", LONG[:-1]]))


@pytest.mark.parametrize("cls", [ChatCompletionRequest, GenerateBody])
def test_a_single_stop_string_is_bounded_too(cls):
    body = {"model": "m", "messages": MSG, "prompt": "p"}
    body = {k: v for k, v in body.items() if k in cls.model_fields}
    if cls is GenerateBody:
        body["options"] = {"stop": LONG}
    else:
        body["stop"] = LONG
    assert _refused(cls, body).param in ("stop", "options.stop")


def test_a_custom_models_stop_parameter_is_bounded():
    with pytest.raises(InvalidParameter) as info:
        parse_definition({"from": "m", "parameters": {"stop": MANY}})
    assert info.value.param == "stop"
    assert f"at most {limits.MAX_STOPS} stop strings" in info.value.message


@pytest.mark.parametrize(
    ("cls", "body", "field"),
    [
        (ChatCompletionRequest, {"model": "m", "messages": MSG}, "seed"),
        (CompletionBody, {"prompt": "p"}, "seed"),
        (GenerateBody, {"model": "m"}, "options.seed"),
    ],
)
def test_a_seed_beyond_64_bits_is_refused(cls, body, field):
    def with_seed(seed: int) -> dict:
        if field == "options.seed":
            return {**body, "options": {"seed": seed}}
        return {**body, "seed": seed}

    assert _refused(cls, with_seed(2**64 - 1)).param == field
    assert _refused(cls, with_seed(-(2**63) - 1)).param == field
    validate(cls, with_seed(2**63 - 1))


def test_embedding_inputs_have_the_same_bound_on_both_apis():
    from mullama.api.openai.schemas import EmbeddingRequest

    inputs = ["a"] * (limits.MAX_INPUTS + 1)
    for cls in (EmbeddingRequest, EmbedBody):
        err = _refused(cls, {"model": "m", "input": inputs})
        assert err.param == "input"
        assert f"at most {limits.MAX_INPUTS} inputs" in err.message
        validate(cls, {"model": "m", "input": inputs[1:]})


def test_completions_per_request_are_prompts_times_n():
    prompts = ["p"] * (limits.MAX_COMPLETIONS // 4 + 1)
    err = _refused(CompletionRequest, {"model": "m", "prompt": prompts, "n": 4})
    assert err.param == "prompt"
    assert f"at most {limits.MAX_COMPLETIONS} completions" in err.message
    validate(CompletionRequest, {"model": "m", "prompt": prompts[1:], "n": 4})


def test_repeat_last_n_is_clamped_to_the_context():
    for asked, got in [(2_000_000_000, 2048), (-1, 2048), (4096, 2048), (64, 64), (0, 0)]:
        assert limits.bound(SamplingParams(repeat_last_n=asked), 2048, 49152).repeat_last_n == got


def test_top_k_at_or_over_the_vocabulary_is_off():
    for asked, got in [(2**32 + 1, 0), (49152, 0), (49151, 49151), (40, 40), (0, 0)]:
        assert limits.bound(SamplingParams(top_k=asked), 2048, 49152).top_k == got


def test_bound_leaves_what_is_within_the_model_as_it_is():
    p = SamplingParams(stop=["x"] * limits.MAX_STOPS)
    assert limits.bound(p, 2048, 49152) is p


def test_the_worker_refuses_stops_from_any_source():
    """A custom model's stored parameters reach the worker without a request schema."""
    with pytest.raises(InvalidParameter) as info:
        limits.bound(SamplingParams(stop=MANY), 2048, 49152)
    assert info.value.param == "stop"


def test_api_doc_lists_the_limits():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "API.md").read_text()
    assert limits.limits_markdown() in doc, (
        "docs/API.md is stale: regenerate its Limits table (engine/limits.py)"
    )


@pytest.mark.parametrize(
    ("asked", "cap", "tokens", "clamped"),
    [
        (32000, 0, 412, "context"),  # an agent's max_tokens on a 512-token context
        (None, 0, 412, None),  # unset: what room the context has
        (100, 0, 100, None),
        (412, 0, 412, None),  # exactly the room
        (None, 8, 8, None),  # unset: the cap is the length
        (100, 8, 8, "cap"),
        (5, 8, 5, None),
        (32000, 1000, 412, "context"),  # the cap is over the room: the room
        (32000, 412, 412, "cap"),
        (0, 8, 0, None),  # scoring only
    ],
)  # fmt: skip
def test_fit_length_clamps_to_the_cap_and_the_room_and_says_which(asked, cap, tokens, clamped):
    assert limits.fit_length(100, asked, 512, cap, False, "messages") == limits.Length(
        tokens, clamped
    )


def test_fit_length_strict_refuses_what_the_context_cannot_hold():
    with pytest.raises(ContextLengthExceeded) as info:
        limits.fit_length(100, 32000, 512, 0, True, "messages")
    assert info.value.param == "max_tokens"
    assert "32100 were requested (100 in the prompt, 32000 for the completion)" in str(info.value)
    # What fits, or what the server's own cap brings within the room, is not refused.
    assert limits.fit_length(100, 32000, 512, 8, True, "messages") == limits.Length(8, "cap")
    assert limits.fit_length(100, None, 512, 1000, True, "messages") == limits.Length(412)


@pytest.mark.parametrize("strict", [False, True])
def test_fit_length_refuses_a_prompt_that_fills_the_context(strict):
    with pytest.raises(ContextLengthExceeded) as info:
        limits.fit_length(512, None, 512, 0, strict, "messages")
    assert info.value.param == "messages" and "the prompt has 512 tokens" in str(info.value)
