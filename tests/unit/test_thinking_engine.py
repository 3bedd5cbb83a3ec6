"""The engine's part of reasoning models (issue 34): the chat template's extra variables
and the per-sequence thinking state machine (engine/reasoning.py)."""

from __future__ import annotations

import pytest

from mullama.engine.chat_template import ChatTemplate
from mullama.engine.protocol import ThinkSyntax
from mullama.engine.reasoning import AFTER, INSIDE, START, Thinking, initial_phase

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
