"""Reasoning models (issue 34): the thinking format read off real chat templates (llama.cpp's
corpus, copied into tests/unit/templates/), the plan that makes a request's Think, the
model's defaults and the flags into the engine's ThinkSyntax and the template's
variables, earlier turns' reasoning given to the template as it reads it, a model's
defaults from the flags, its custom parameters and --model-opt, the chat path's engine
requests carrying all of it, and a cached answer keeping its thinking."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from mullama.api.chat import Chat, Planned, engine_requests
from mullama.api.profiles import Profile, profile_of
from mullama.api.thinking import (
    THINKING_BLOCK,
    Think,
    ThinkDefaults,
    ThinkFormat,
    history_for,
    plan_thinking,
    probe,
    template_thinking,
)
from mullama.api.tools import ToolPlan
from mullama.config import load_settings
from mullama.engine.chat_template import ChatTemplate
from mullama.engine.protocol import Chunk, SamplingParams, ThinkSyntax
from mullama.errors import InvalidParameter
from mullama.models.cache import decode, encode
from mullama.models.custom import parse_definition
from mullama.models.embedded import embedded_model_path
from mullama.models.gguf import read_gguf
from mullama.models.options import ModelOptions, parse_model_opts

TEMPLATES = Path(__file__).parent / "templates"
THINK = ("<think>", "</think>")
HARMONY = ("<|channel|>analysis<|message|>", "<|end|>")

# template -> (family, (open, close), opened, switch, history_key)
FAMILIES = {
    "Qwen-Qwen3-0.6B": ("think", THINK, False, "enable_thinking", "reasoning_content"),
    "Qwen-QwQ-32B": ("think", THINK, True, "enable_thinking", None),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": ("think", THINK, True, "enable_thinking", None),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": ("think", THINK, True, None, None),
    "deepseek-ai-DeepSeek-V3.1": ("think", THINK, True, "enable_thinking", None),
    "openai-gpt-oss-120b": ("harmony", HARMONY, False, "reasoning_effort", "thinking"),
    "mistralai-Ministral-3-14B-Reasoning-2512": (
        "mistral", ("[THINK]", "[/THINK]"), False, None, THINKING_BLOCK,
    ),
    "HuggingFaceTB-SmolLM3-3B": ("think", THINK, False, "enable_thinking", None),
    "GLM-4.6": ("think", THINK, False, "enable_thinking", "reasoning_content"),
    "Kimi-K2-Thinking": ("think", THINK, False, None, None),
    "MiniMax-M2": ("think", THINK, True, None, "reasoning_content"),
    "ByteDance-Seed-OSS": (
        "seed", ("<seed:think>", "</seed:think>"), False, "thinking_budget", "reasoning_content",
    ),
    "NVIDIA-Nemotron-Nano-v2": ("think", THINK, True, None, None),
    "ibm-granite-granite-3.3-2B-Instruct": ("think", THINK, False, "thinking", None),
}  # fmt: skip


def source(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_is_recognised_from_its_template(name):
    family, (open_, close), opened, switch, history_key = FAMILIES[name]
    fmt = template_thinking(source(name))
    assert fmt is not None
    assert (fmt.family, fmt.open, fmt.close) == (family, open_, close)
    assert (fmt.opened, fmt.switch, fmt.history_key) == (opened, switch, history_key)


def test_harmony_answers_after_its_final_channel():
    fmt = template_thinking(source("openai-gpt-oss-120b"))
    assert fmt is not None
    assert fmt.answer == "<|start|>assistant<|channel|>final<|message|>"
    assert fmt.syntax(64, True) == ThinkSyntax(fmt.open, fmt.close, fmt.answer, 64, True)


@pytest.mark.parametrize("name", ["Qwen-Qwen2.5-7B-Instruct", "google-gemma-2-2b-it",
                                  "meta-llama-Llama-3.2-3B-Instruct"])  # fmt: skip
def test_templates_without_thinking_have_no_format(name):
    assert template_thinking(source(name)) is None


def test_smollm2s_chatml_and_no_template_have_no_format():
    chatml = read_gguf(embedded_model_path()).chat_template
    assert chatml and "<|im_start|>" in chatml
    assert template_thinking(chatml) is None
    assert template_thinking(None) is None
    assert template_thinking("{% if %}") is None  # does not compile: nothing written


def test_the_probe_runs_once_per_template_and_off_the_loop():
    text = source("Qwen-Qwen3-0.6B") + "{# another source #}"
    first = asyncio.run(probe(text))
    assert first is not None and asyncio.run(probe(text)) is first
    assert template_thinking(text) is first


QWEN3 = template_thinking(source("Qwen-Qwen3-0.6B"))
R1 = template_thinking(source("deepseek-ai-DeepSeek-R1-Distill-Llama-8B"))
GPT_OSS = template_thinking(source("openai-gpt-oss-120b"))
SEED = template_thinking(source("ByteDance-Seed-OSS"))


def test_an_unrecognised_template_gets_no_separation_and_only_the_requests_variables():
    assert plan_thinking(None, Think(on=True)) == (None, {})
    assert plan_thinking(None, Think(), kwargs={"x": 1}) == (None, {"x": 1})


def test_by_default_the_switch_is_on_and_nothing_is_forced():
    syntax, variables = plan_thinking(QWEN3, Think())
    assert syntax == ThinkSyntax("<think>", "</think>")
    assert variables == {"enable_thinking": True}


def test_on_turns_the_switch_on_and_forces_the_block_open():
    syntax, variables = plan_thinking(QWEN3, Think(on=True))
    assert syntax is not None and syntax.force_open and syntax.budget is None
    assert variables == {"enable_thinking": True}


def test_off_turns_the_switch_off_or_without_one_closes_at_once():
    syntax, variables = plan_thinking(QWEN3, Think(on=False))
    assert variables == {"enable_thinking": False}
    assert syntax is not None and syntax.budget == 0 and not syntax.force_open
    syntax, variables = plan_thinking(R1, Think(on=False))
    assert variables == {} and syntax is not None and syntax.budget == 0
    assert plan_thinking(SEED, Think(on=False))[1] == {"thinking_budget": 0}
    assert plan_thinking(GPT_OSS, Think(on=False))[1] == {"reasoning_effort": "low"}


@pytest.mark.parametrize(("effort", "budget"), [("minimal", 256), ("low", 1024),
                                                ("medium", 4096), ("high", None),
                                                ("xhigh", None)])  # fmt: skip
def test_effort_is_a_budget_for_a_template_that_does_not_read_it(effort, budget):
    syntax, variables = plan_thinking(QWEN3, Think(effort=effort))
    assert syntax is not None and syntax.budget == budget and syntax.force_open
    assert variables == {"enable_thinking": True}


def test_effort_goes_as_it_is_to_a_template_that_reads_it():
    syntax, variables = plan_thinking(GPT_OSS, Think(effort="minimal"))
    assert variables == {"reasoning_effort": "low"} and syntax is not None
    assert syntax.budget is None
    assert plan_thinking(GPT_OSS, Think(effort="xhigh"))[1] == {"reasoning_effort": "high"}
    syntax, variables = plan_thinking(GPT_OSS, Think(effort="none"))
    assert variables == {"reasoning_effort": "low"} and syntax is not None and syntax.budget == 0


def test_a_requests_budget_wins_over_its_effort_and_the_models_default():
    model = ThinkDefaults(budget=500)
    assert plan_thinking(QWEN3, Think(), model)[0].budget == 500  # type: ignore[union-attr]
    assert plan_thinking(QWEN3, Think(effort="minimal"), model)[0].budget == 256  # type: ignore[union-attr]
    syntax = plan_thinking(QWEN3, Think(effort="low", budget=9), model)[0]
    assert syntax is not None and syntax.budget == 9
    assert plan_thinking(SEED, Think(budget=9))[1] == {"thinking_budget": 9}


def test_the_models_default_on_and_off_under_the_request():
    off = ThinkDefaults(on=False)
    assert plan_thinking(QWEN3, Think(), off)[1] == {"enable_thinking": False}
    assert plan_thinking(QWEN3, Think(on=True), off)[1] == {"enable_thinking": True}
    assert plan_thinking(QWEN3, Think(), ThinkDefaults(on=True))[0].force_open  # type: ignore[union-attr]


def test_a_constraint_forces_the_block_open_unless_thinking_is_off():
    assert plan_thinking(QWEN3, Think(), constrained=True)[0].force_open  # type: ignore[union-attr]
    syntax = plan_thinking(QWEN3, Think(on=False), constrained=True)[0]
    assert syntax is not None and not syntax.force_open


def test_reasoning_format_none_separates_nothing_but_still_sets_the_switch():
    raw = ThinkDefaults(reasoning_format="none")
    assert plan_thinking(QWEN3, Think(on=False), raw) == (None, {"enable_thinking": False})


def test_chat_template_kwargs_go_to_the_template_and_their_switch_is_the_requests():
    syntax, variables = plan_thinking(QWEN3, Think(), kwargs={"enable_thinking": False, "x": 1})
    assert variables == {"enable_thinking": False, "x": 1}
    assert syntax is not None and syntax.budget == 0
    syntax, variables = plan_thinking(QWEN3, Think(), kwargs={"enable_thinking": True})
    assert syntax is not None and syntax.force_open


@pytest.mark.parametrize("kwargs", [{"messages": []}, {"add_generation_prompt": False},
                                    {"tools": None}, {"bos_token": ""}, ["enable_thinking"],
                                    {"namespace": 1}, {"raise_exception": 0}])  # fmt: skip
def test_reserved_names_and_non_objects_are_refused_naming_the_field(kwargs):
    with pytest.raises(InvalidParameter) as err:
        plan_thinking(QWEN3, Think(), kwargs=kwargs)
    assert err.value.param == "chat_template_kwargs"


def test_defaults_layer_the_flags_the_custom_model_and_model_opt():
    d = ThinkDefaults.layered("auto", {"reasoning_budget": -1}, {"reasoning_budget": 100})
    assert d == ThinkDefaults("auto", None, 100)
    d = ThinkDefaults.layered("auto", {"reasoning_budget": 0})
    assert d == ThinkDefaults("auto", False, None)  # llama-server's 0: thinking off
    d = ThinkDefaults.layered("auto", {"reasoning_budget": 0}, {"think": True})
    assert d == ThinkDefaults("auto", True, None)
    d = ThinkDefaults.layered("none", {"think": True}, {"think": False, "reasoning_format": "auto"})
    assert d == ThinkDefaults("auto", False, None)


TURNS = [
    {"role": "user", "content": "q"},
    {"role": "assistant", "content": "a", "reasoning_content": "r"},
    {"role": "user", "content": "q2"},
]


def test_history_goes_under_the_templates_key_or_is_dropped():
    assert history_for(TURNS, QWEN3) is TURNS
    assert history_for(TURNS, None) is TURNS
    assert history_for(TURNS, GPT_OSS)[1] == {"role": "assistant", "content": "a", "thinking": "r"}
    assert history_for(TURNS, R1)[1] == {"role": "assistant", "content": "a"}
    mistral = ThinkFormat("mistral", "[THINK]", "[/THINK]", history_key=THINKING_BLOCK)
    assert history_for(TURNS, mistral)[1]["content"] == [
        {"type": "thinking", "thinking": "r"}, {"type": "text", "text": "a"},
    ]  # fmt: skip
    assert TURNS[1]["reasoning_content"] == "r"  # the caller's messages are left as they were


@pytest.mark.parametrize("name", ["openai-gpt-oss-120b", "mistralai-Ministral-3-14B-Reasoning-2512",
                                  "Qwen-Qwen3-0.6B"])  # fmt: skip
def test_the_template_writes_the_reasoning_it_is_given_back(name):
    fmt = template_thinking(source(name))
    last = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "the answer", "reasoning_content": "the reasoning"}]  # fmt: skip
    text = ChatTemplate(source(name)).render(history_for(last, fmt), False)
    assert fmt is not None and f"{fmt.open}" in text and "the reasoning" in text


class _Models:
    """What profile_of reads of the model manager: one custom model in the store."""

    def __init__(self, parameters: dict, model_opt: list[str], **settings) -> None:
        self.settings = load_settings(settings)
        self.per_model = parse_model_opts(model_opt)
        ref = SimpleNamespace(system=None, template=None, parameters=parameters)
        self.entry = SimpleNamespace(name="m", ref=ref, sampling={}, gguf=lambda: 1 / 0)

    def remote(self, name):
        return None

    def find(self, name):
        return self.entry

    def options(self, name):
        return self.per_model.get(name, ModelOptions()).with_defaults(self.settings)


def test_a_models_thinking_defaults_layer_flags_parameters_and_model_opt():
    assert profile_of(_Models({}, []), "m").thinking == ThinkDefaults("auto", None, None)
    flags = _Models({}, [], reasoning_budget="0", reasoning_format="none")
    assert profile_of(flags, "m").thinking == ThinkDefaults("none", False, None)
    custom = _Models({"think": True, "reasoning_budget": 300}, [], reasoning_budget="0")
    assert profile_of(custom, "m").thinking == ThinkDefaults("auto", True, 300)
    opt = _Models({"think": True, "reasoning_budget": 300},
                  ["m:think=false", "m:reasoning_budget=-1", "m:reasoning_format=deepseek"])  # fmt: skip
    assert profile_of(opt, "m").thinking == ThinkDefaults("deepseek", False, None)


def test_custom_model_parameters_take_think_and_a_budget():
    params = {"think": False, "reasoning_budget": 64, "temperature": 0}
    assert parse_definition({"from": "x", "parameters": params}).parameters == params
    with pytest.raises(InvalidParameter, match="reasoning_budget"):
        parse_definition({"from": "x", "parameters": {"reasoning_budget": -2}})
    with pytest.raises(InvalidParameter, match="think"):
        parse_definition({"from": "x", "parameters": {"think": "sometimes"}})


def _chat(**kw) -> Chat:
    return Chat("m", lambda native: [dict(t) for t in TURNS], **kw)


def test_engine_requests_carry_the_plan_and_the_renamed_history():
    planned = Planned(ToolPlan([], "none", True), Profile(), GPT_OSS)
    (req,) = engine_requests(_chat(think=Think(effort="high")), "r", planned)
    assert req.params.thinking == GPT_OSS.syntax(None, True)  # type: ignore[union-attr]
    assert req.template_vars == {"reasoning_effort": "high"}
    assert req.messages is not None and req.messages[1]["thinking"] == "r"
    plain = Planned(ToolPlan([], "none", True), Profile(), None)
    (req,) = engine_requests(_chat(), "r", plain)
    assert req.params.thinking is None and req.template_vars is None
    assert req.messages is not None and req.messages[1]["reasoning_content"] == "r"


def test_a_json_schema_forces_the_block_open_and_reserved_kwargs_are_refused():
    def schema(profile):
        return SamplingParams(json_schema={"type": "object"})

    planned = Planned(ToolPlan([], "none", True), Profile(), QWEN3)
    (req,) = engine_requests(_chat(sampling=schema), "r", planned)
    assert req.params.thinking is not None and req.params.thinking.force_open
    with pytest.raises(InvalidParameter, match="messages"):
        engine_requests(_chat(template_vars={"messages": []}), "r", planned)


def test_a_cached_answer_keeps_its_thinking():
    chunks = [Chunk("", 3, reasoning="hmm"), Chunk("Paris", 4, finish_reason="stop")]
    back = decode(encode(chunks))
    assert [(c.reasoning, c.text, c.finish_reason) for c in back] == [
        ("hmm", "", None), ("", "Paris", "stop"),
    ]  # fmt: skip
    assert decode(b'[["Paris", "stop", null, null]]')[0].reasoning == ""  # stored before
