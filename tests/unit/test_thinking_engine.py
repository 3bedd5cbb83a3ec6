"""The engine's part of reasoning models (issue 34): the chat template's extra variables
and the per-sequence thinking state machine (engine/reasoning.py)."""

from __future__ import annotations

from mullama.engine.chat_template import ChatTemplate

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
