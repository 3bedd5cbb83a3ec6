"""The table of sampling knobs (engine/knobs.py): every request model, the engine request,
--model-opt, a custom model's parameters and the remote body read it; one bound per knob
and API, written once."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from mullama.api.anthropic.schemas import MessagesRequest
from mullama.api.body import validate
from mullama.api.llamaserver import CompletionBody
from mullama.api.ollama.schemas import Options
from mullama.api.openai.schemas import ChatCompletionRequest
from mullama.engine import knobs
from mullama.engine.protocol import SamplingParams
from mullama.engine.remote import sampling_fields
from mullama.errors import ClientError, InvalidParameter
from mullama.models.custom import ModelParameters, parse_definition
from mullama.models.options import SAMPLING, parse_model_opts

MSG = [{"role": "user", "content": "hi"}]
BODIES = {
    "openai": (ChatCompletionRequest, {"model": "m", "messages": MSG}),
    "anthropic": (MessagesRequest, {"model": "m", "messages": MSG, "max_tokens": 4}),
    "ollama": (Options, {}),
    "llamaserver": (CompletionBody, {"prompt": "hi"}),
}


def test_the_engine_request_has_one_field_per_knob_with_its_default():
    own = {f.name: f.default for f in fields(SamplingParams)}
    for k in knobs.KNOBS:
        assert own[k.name] == k.default
        assert getattr(SamplingParams(), k.name) == k.default


@pytest.mark.parametrize("dialect", list(BODIES))
def test_each_api_takes_exactly_its_knobs(dialect):
    model, _ = BODIES[dialect]
    names = set(knobs.fields(dialect))
    assert names <= set(model.model_fields)
    other = {n for k in knobs.KNOBS for n in (*k.names.values(), *k.also.values())} - names
    assert not other & set(model.model_fields), "a knob's name in another API only"


def test_custom_model_parameters_and_model_opts_come_from_the_table():
    assert set(knobs.fields("ollama")) <= set(ModelParameters.model_fields)
    assert set(SAMPLING) == {k.name for k in knobs.of("defaults")}


def test_anthropic_knobs_reach_the_chat_request_by_their_openai_names():
    for k in knobs.of("anthropic"):
        assert "openai" in k.names
    body = {**BODIES["anthropic"][1], "temperature": 0.5, "top_p": 0.5, "top_k": 3}
    p = validate(MessagesRequest, body).to_chat().to_sampling_params(_empty(), None)
    assert (p.temperature, p.top_p, p.top_k) == (0.5, 0.5, 3)


def _empty():
    from mullama.api.profiles import EMPTY

    return EMPTY


# ---- temperature: one bound per API, from the table ---------------------------------


@pytest.mark.parametrize(
    ("dialect", "field", "accepted", "refused"),
    [("openai", "temperature", 2.0, 2.5), ("anthropic", "temperature", 1.0, 1.5),
     ("ollama", "temperature", 5.0, 5.5), ("llamaserver", "temperature", 5.0, 5.5)],
)  # fmt: skip
def test_temperature_has_each_apis_bound(dialect, field, accepted, refused):
    assert knobs.BY_NAME["temperature"].bounds(dialect).le == accepted
    model, base = BODIES[dialect]
    validate(model, {**base, field: accepted})
    with pytest.raises(InvalidParameter) as err:
        validate(model, {**base, field: refused})
    assert err.value.param == field


def test_a_custom_model_and_a_model_opt_are_checked_by_their_bounds():
    parse_definition({"from": "m", "parameters": {"temperature": 5.0}})
    with pytest.raises(InvalidParameter, match="temperature"):
        parse_definition({"from": "m", "parameters": {"temperature": 5.5}})
    assert parse_model_opts(["m:temperature=2"])["m"].temperature == 2.0
    with pytest.raises(ClientError, match="less than or equal to 2"):
        parse_model_opts(["m:temperature=2.5"])


def test_llama_server_knobs_go_to_the_engine_request_with_llama_servers_bounds():
    body = validate(CompletionBody, {"prompt": "hi", "temperature": 3.0, "repeat_last_n": 8,
                                     "top_k": 2})  # fmt: skip
    p = body.to_completion("m").to_sampling_params(_empty(), None)
    body.set_knobs(p)
    assert (p.temperature, p.repeat_last_n, p.top_k) == (3.0, 8, 2)


# ---- the remote engine's body -------------------------------------------------------


def test_remote_body_sends_set_knobs_by_their_upstream_names():
    assert sampling_fields(SamplingParams(), "m") == {"temperature": 0.8, "top_p": 0.95}
    out = sampling_fields(SamplingParams(repeat_last_n=-1, repeat_penalty=1.2, seed=4), "m")
    assert out["repeat_last_n"] == -1  # was dropped
    assert out["repeat_penalty"] == out["repetition_penalty"] == 1.2 and out["seed"] == 4


def test_docs_list_the_knobs():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "API.md").read_text()
    assert knobs.knobs_markdown() in doc, "docs/API.md is stale: regenerate its knob table"


# ---- typical_p: a knob added by its row in the table and the engine's sampler ----------


@pytest.mark.parametrize(
    ("dialect", "where"), [("openai", "typical_p"), ("ollama", "typical_p"),
                           ("llamaserver", "typical_p")],
)  # fmt: skip
def test_typical_p_is_taken_within_0_and_1_and_refused_out_of_them(dialect, where):
    model, base = BODIES[dialect]
    for value in (0.0, 0.5, 1.0):
        assert knobs.values(validate(model, {**base, "typical_p": value}), dialect) == {
            "typical_p": value
        }
    for value in (-0.1, 1.5):
        with pytest.raises(InvalidParameter) as err:
            validate(model, {**base, "typical_p": value})
        assert err.value.param == where and "typical_p" in err.value.message


def test_typical_p_reaches_the_engine_request_from_each_api():
    chat = validate(ChatCompletionRequest, {**BODIES["openai"][1], "typical_p": 0.3})
    assert chat.to_sampling_params(_empty(), None).typical_p == 0.3
    assert Options(typical_p=0.4).to_sampling_params(None, _empty()).typical_p == 0.4
    body = validate(CompletionBody, {"prompt": "hi", "typical_p": 0.6})
    p = SamplingParams()
    body.set_knobs(p)
    assert p.typical_p == 0.6 and SamplingParams().typical_p == 1.0
    assert sampling_fields(p, "m")["typical_p"] == 0.6
