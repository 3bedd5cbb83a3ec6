"""The engine's part of reasoning models (issue 34): the chat template's extra variables
and the per-sequence thinking state machine (engine/reasoning.py)."""

from __future__ import annotations

import pytest

from mullama.engine.chat_template import ChatTemplate
from mullama.engine.detokenize import StopMatcher
from mullama.engine.protocol import GenerateRequest, SamplingParams, ThinkSyntax
from mullama.engine.reasoning import AFTER, INSIDE, START, Thinking, initial_phase
from mullama.engine.remote import StreamReader, chat_body
from mullama.engine.scheduler import Scheduler
from mullama.engine.sequence import Sequence
from tests.unit.fake_engine import EOG, FakeBatch, FakeCtx, FakeModel, FakeSampler

SWITCH = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)


def test_template_variables_reach_the_template_and_never_replace_its_own_names():
    chat = ChatTemplate(SWITCH)
    msgs = [{"role": "user", "content": "hi"}]
    assert chat.render(msgs).endswith("<|im_start|>assistant\n")
    off = chat.render(msgs, True, None, {"enable_thinking": False})
    assert off.endswith("<think>\n\n</think>\n\n")
    hostile = {"messages": [], "add_generation_prompt": False, "bos_token": "X", "tools": 1}
    assert chat.render(msgs, True, None, hostile) == chat.render(msgs)


# ---- the thinking state machine -------------------------------------------------------

QWEN = ThinkSyntax("<think>", "</think>")
MISTRAL = ThinkSyntax("[THINK]", "[/THINK]")
SEED = ThinkSyntax("<seed:think>", "</seed:think>")
HARMONY = ThinkSyntax(
    "<|channel|>analysis<|message|>", "<|end|>", "<|start|>assistant<|channel|>final<|message|>"
)


def _fake_tokens(text: str) -> list[int]:
    return [ord(c) for c in text]


def _split(syntax: ThinkSyntax, pieces: list[str], phase: int = START) -> tuple[str, str]:
    th = Thinking(syntax, phase, _fake_tokens)
    think = answer = ""
    for piece in pieces:
        t, a = th.feed(piece)
        think, answer = think + t, answer + a
    t, a = th.flush()
    return think + t, answer + a


# (syntax, the prompt's phase, raw reply, thinking, answer)
CASES = [
    (QWEN, START, "<think>\nLet me see.\n</think>\n\nHello!", "Let me see.", "Hello!"),
    (QWEN, START, "  <think>a < b </thin\n</think>Hi", "a < b </thin", "Hi"),
    (QWEN, START, "Hello <think>no</think>", "", "Hello <think>no</think>"),
    (QWEN, START, "<thin", "", "<thin"),
    (QWEN, START, "\n\n", "", "\n\n"),
    (QWEN, START, "<think>\nunfinished </th", "unfinished </th", ""),
    (QWEN, INSIDE, "\nI think.\n</think>\n\nAnswer </think> x", "I think.", "Answer </think> x"),
    (QWEN, AFTER, "\n\nJust <think> text", "", "Just <think> text"),
    (MISTRAL, START, "[THINK]hmm [/THINK ok[/THINK]Sure.", "hmm [/THINK ok", "Sure."),
    (SEED, START, '<seed:think>plan\n\n</seed:think>\n{"a": 1}', "plan", '{"a": 1}'),
    (
        HARMONY,
        START,
        "<|channel|>analysis<|message|>User says hi.<|end|><|start|>assistant<|channel|>final"
        "<|message|>Hi there",
        "User says hi.",
        "Hi there",
    ),
    (
        HARMONY,
        START,
        "<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>commentary",
        "x",
        "<|start|>assistant<|channel|>commentary",
    ),
]


@pytest.mark.parametrize(("syntax", "phase", "raw", "think", "answer"), CASES)
def test_the_split_is_the_same_whole_and_cut_anywhere(syntax, phase, raw, think, answer):
    assert _split(syntax, [raw], phase) == (think, answer)
    assert _split(syntax, list(raw), phase) == (think, answer)
    for cut in range(len(raw) + 1):
        assert _split(syntax, [raw[:cut], raw[cut:]], phase) == (think, answer), cut
    for cut in range(1, len(raw)):
        thirds = [raw[:cut], raw[cut : cut + 3], raw[cut + 3 :]]
        assert _split(syntax, thirds, phase) == (think, answer), cut


def test_the_phase_comes_from_the_prompt():
    assert initial_phase(QWEN, "<|im_start|>assistant\n") == START
    assert initial_phase(QWEN, "<|im_start|>assistant\n<think>\n") == INSIDE
    assert initial_phase(QWEN, "<|im_start|>assistant\n<think>\n\n</think>\n\n") == AFTER
    assert initial_phase(HARMONY, "<|start|>assistant") == START


def test_a_partial_marker_is_held_back_until_it_is_decided():
    th = Thinking(QWEN, START, _fake_tokens)
    assert th.feed(" <thi") == ("", "")
    assert th.feed("nk>\nso") == ("so", "")
    assert th.feed(" far </") == (" far", "")  # whitespace and a closing's start held
    assert th.feed("x") == (" </x", "")
    assert th.feed("</think>\n\n") == ("", "")
    assert th.feed("The") == ("", "The")
    assert th.phase == AFTER


def test_forced_opening_and_budget_close_and_the_counts():
    th = Thinking(ThinkSyntax("<think>", "</think>", budget=2, force_open=True), START, list)
    opening = th.due()
    assert "".join(opening) == "<think>\n"
    for tok in opening:
        th.feed(tok, forced=True)
    assert th.phase == INSIDE and th.n_tokens == len(opening) and th.n_sampled == 0
    assert th.due() == []
    assert th.feed("Hm") == ("Hm", "")
    assert th.due() == []
    assert th.feed(".") == (".", "")
    closing = th.due()
    assert "".join(closing) == "\n</think>\n\n" and th.due() == []
    out = [th.feed(tok, forced=True) for tok in closing]
    assert out == [("", "")] * len(closing) and th.phase == AFTER
    # the opening's 8 characters, 2 sampled, the closing's "\n" and 8 characters
    assert th.n_tokens == 8 + 2 + 9 and th.n_sampled == 2
    assert th.feed("Yes") == ("", "Yes") and th.n_tokens == 19


def test_a_zero_budget_closes_at_once_without_a_blank_line():
    th = Thinking(ThinkSyntax("<think>", "</think>", budget=0), INSIDE, list)
    assert "".join(th.due()) == "</think>\n\n"  # the prompt ended with the opening's line
    th = Thinking(ThinkSyntax("<think>", "</think>", budget=0, force_open=True), START, list)
    for tok in th.due():
        th.feed(tok, forced=True)
    assert "".join(th.due()) == "</think>\n\n"


def test_the_harmony_close_writes_the_answer_header():
    syntax = ThinkSyntax(HARMONY.open, HARMONY.close, HARMONY.answer, budget=1)
    th = Thinking(syntax, INSIDE, list)
    th.feed("x")
    assert "".join(th.due()) == "\n<|end|><|start|>assistant<|channel|>final<|message|>"


# ---- the step with a thinking sequence (the fake engine) ---------------------------------


class CharModel(FakeModel):
    """Every token is one character (its code point); 0 ends the generation."""

    def piece(self, tok, special=False):
        return chr(tok).encode()


class ScriptSampler(FakeSampler):
    """Plays a script, and records which picks were constrained and what it was told."""

    def __init__(self, text):
        super().__init__([ord(c) for c in text] + [EOG])
        self.constrained: list[bool] = []
        self.accepted: list[int] = []

    def sample(self, ctx, row, constrained=True):
        self.constrained.append(constrained)
        return super().sample(ctx, row)

    def accept(self, token):
        self.accepted.append(token)


def _run(syntax, script, prompt="Q", max_tokens=100, stops=()):
    return _run_with(syntax, ScriptSampler(script), prompt, max_tokens, stops)


def _run_with(syntax, sampler, prompt="Q", max_tokens=100, stops=()):
    sched = Scheduler(model=CharModel(), ctx=FakeCtx(), batch=FakeBatch(64), n_slots=1, n_batch=64)
    s = Sequence(
        "s", [ord(c) for c in prompt], len(prompt), max_tokens, sampler,
        StopMatcher(list(stops)),
    )  # fmt: skip
    s.thinking = Thinking(syntax, initial_phase(syntax, prompt), _fake_tokens)
    sched.submit(s)
    out = []
    while sched.has_work():
        out += sched.step()
    return s, sampler, out


def test_the_engine_opens_and_closes_the_block_and_the_constraint_waits_for_the_answer():
    syntax = ThinkSyntax("<think>", "</think>", budget=3, force_open=True)
    s, sampler, out = _run(syntax, "abcdefg")
    assert "".join(o.reasoning for o in out) == "abc"
    assert "".join(o.text for o in out) == "defg"
    forced = "<think>\n" + "\n</think>\n\n"
    assert "".join(chr(t) for t in s.tokens[1:]) == "<think>\nabc\n</think>\n\ndefg"
    assert [chr(t) for t in sampler.accepted] == list(forced)
    # 3 thinking picks free, then the answer's 4 and the end, constrained
    assert sampler.constrained == [False] * 3 + [True] * 5
    last = out[-1]
    assert last.finish == "stop" and last.n_generated == len(forced) + 7
    assert last.n_reasoning == len("<think>\n") + 3 + len("\n</think>")
    assert all(o.n_reasoning <= last.n_reasoning for o in out)


def test_stop_strings_apply_to_the_answer_only_and_max_tokens_cuts_forced_text():
    syntax = ThinkSyntax("<think>", "</think>", budget=2, force_open=True)
    s, _, out = _run(syntax, "xyz.done", stops=["y"])
    assert "".join(o.reasoning for o in out) == "xy"
    assert "".join(o.text for o in out) == "z.done"  # a "y" in the thinking stops nothing
    s, _, out = _run(syntax, "xyz", max_tokens=4)
    assert out[-1].finish == "length" and out[-1].n_generated == 4
    assert "".join(o.reasoning + o.text for o in out) == ""


def test_a_reply_that_opens_by_itself_and_a_prompt_that_opened_it():
    syntax = ThinkSyntax("<think>", "</think>")
    _, sampler, out = _run(syntax, "<think>hm</think>ok")
    assert ("".join(o.reasoning for o in out), "".join(o.text for o in out)) == ("hm", "ok")
    assert sampler.constrained[:7] == [True] * 7  # opening it, the constraint applied
    assert sampler.accepted == []
    _, _, out = _run(ThinkSyntax("<think>", "</think>", budget=0), "ok", prompt="Q<think>\n")
    assert "".join(o.reasoning for o in out) == "" and "".join(o.text for o in out) == "ok"
    assert out[-1].n_reasoning == len("</think>")


# ---- a remote engine's thinking ---------------------------------------------------------


def test_an_upstreams_reasoning_deltas_and_counts_become_the_chunks():
    reader = StreamReader(chat=True)

    def delta(**d):
        return reader.read({"choices": [{"index": 0, "delta": d}]})

    first = delta(role="assistant", reasoning_content="Let me")
    second = delta(reasoning=" think.")
    answer = delta(content="Hi")
    assert (first.reasoning, first.text, first.reasoning_tokens) == ("Let me", "", 1)
    assert (second.reasoning, second.reasoning_tokens) == (" think.", 2)
    assert (answer.text, answer.reasoning, answer.reasoning_tokens) == ("Hi", "", 2)
    assert reader.last().reasoning_tokens == 2  # no usage: the pieces counted
    reader.read(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": 9,
                "completion_tokens_details": {"reasoning_tokens": 6},
            },
        }
    )
    last = reader.last()
    assert (last.completion_tokens, last.reasoning_tokens) == (9, 6)


def test_template_variables_go_upstream_and_the_think_syntax_does_not():
    params = SamplingParams(thinking=ThinkSyntax("<think>", "</think>", budget=4))
    req = GenerateRequest(
        "r", params, messages=ASK_REMOTE, template_vars={"enable_thinking": False}
    )
    body = chat_body(req, "m", "up")
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "thinking" not in body
    assert "chat_template_kwargs" not in chat_body(
        GenerateRequest("r", params, messages=ASK_REMOTE), "m", "up"
    )


ASK_REMOTE = [{"role": "user", "content": "hi"}]


def test_a_reply_that_ends_inside_its_thinking_is_closed_and_answers():
    syntax = ThinkSyntax("<think>", "</think>", force_open=True)
    sampler = ScriptSampler("hm")
    sampler.tokens[2:2] = [EOG]  # ends in the block, then answers, then ends again
    sampler.tokens[3:3] = [ord("k")]
    s, _, out = _run_with(syntax, sampler)
    assert ("".join(o.reasoning for o in out), "".join(o.text for o in out)) == ("hm", "k")
    assert "".join(chr(t) for t in s.tokens[1:]) == "<think>\nhm\n</think>\n\nk"
    assert out[-1].finish == "stop"


def test_extra_variables_never_take_a_template_function():
    from mullama.engine.chat_template import ChatTemplate

    template = ChatTemplate("{% set ns = namespace(x=1) %}{{ ns.x }}{{ enable_thinking }}")
    assert template.render([], True, None, {"namespace": 1, "enable_thinking": True}) == "1True"
