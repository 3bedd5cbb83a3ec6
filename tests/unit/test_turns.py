"""engine/turns.py: system and developer turns rendered the way a chat template can
express them, on real templates: ChatML (Mullama's default, SmolLM2's shape), one that
insists on alternating turns after a leading system message (the rule of Gemma's and
Mistral's templates, written the same way), and one without a system role."""

from __future__ import annotations

import pytest

from mullama.engine.chat_template import CHATML, ChatTemplate, TemplateRenderError
from mullama.engine.turns import as_user_notes, merged, render_turns

# Gemma's rule: a leading system message, then user and assistant strictly alternate.
ALTERNATING = """\
{%- if messages[0]['role'] == 'system' -%}
{%- set first = messages[0]['content'] + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}
{%- else -%}{%- set first = '' -%}{%- set loop_messages = messages -%}{%- endif -%}
{%- for message in loop_messages -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{%- endif -%}
<turn>{{ message['role'] }}
{{ (first if loop.first else '') + message['content'] | trim }}</turn>
{% endfor -%}
{%- if add_generation_prompt %}<turn>assistant
{% endif -%}"""

# No system role: it writes user and assistant turns and drops anything else.
NO_SYSTEM = """\
{%- for message in messages -%}
{%- if message['role'] in ('user', 'assistant') -%}
[{{ message['role'] }}] {{ message['content'] }}
{% endif -%}
{%- endfor -%}"""

SYS, DEV, NOTE = "You are terse.", "Use tools sparingly.", "Answer in French."


def _render(source: str, messages: list[dict]) -> str:
    template = ChatTemplate(source)
    return render_turns(lambda shape: template.render(shape, True, None), messages)


def test_a_template_that_writes_any_role_gets_the_conversation_as_sent():
    msgs = [{"role": "system", "content": SYS}, {"role": "user", "content": "Hi"},
            {"role": "system", "content": NOTE}]  # fmt: skip
    prompt = _render(CHATML, msgs)
    assert prompt == ChatTemplate(CHATML).render(msgs, True, None)
    assert prompt.index("Hi") < prompt.index(NOTE)  # where it was sent


def test_a_strict_template_gets_later_system_turns_merged_into_the_first():
    msgs = [{"role": "system", "content": SYS}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "system", "content": NOTE},
            {"role": "user", "content": "Weather?"}]  # fmt: skip
    with pytest.raises(TemplateRenderError):
        ChatTemplate(ALTERNATING).render(msgs, True, None)
    prompt = _render(ALTERNATING, msgs)
    assert SYS in prompt and NOTE in prompt and prompt.index(NOTE) < prompt.index("Hi")


def test_codex_developer_turns_and_two_user_messages_on_a_strict_template():
    msgs = [{"role": "developer", "content": SYS}, {"role": "developer", "content": DEV},
            {"role": "user", "content": "<environment_context/>"},
            {"role": "user", "content": "say hi"}]  # fmt: skip
    prompt = _render(ALTERNATING, msgs)
    assert prompt.count("<turn>user") == 1  # the two user messages are one turn
    for text in (SYS, DEV, "<environment_context/>", "say hi"):
        assert text in prompt


def test_a_template_without_a_system_role_gets_them_as_notes_of_the_user_turn():
    msgs = [{"role": "user", "content": "Hi"}, {"role": "system", "content": NOTE}]
    assert NOTE not in ChatTemplate(NO_SYSTEM).render(msgs, True, None)  # dropped silently
    assert _render(NO_SYSTEM, msgs) == f"[user] Hi\n\n{NOTE}\n"


def test_the_shapes():
    msgs = [{"role": "developer", "content": "a"}, {"role": "user", "content": "u1"},
            {"role": "system", "content": "b"}, {"role": "user", "content": "u2"},
            {"role": "user", "content": "u3"}]  # fmt: skip
    assert merged(msgs) == [{"role": "system", "content": "a\n\nb"},
                            {"role": "user", "content": "u1\n\nu2\n\nu3"}]  # fmt: skip
    assert as_user_notes(msgs) == [{"role": "user", "content": "a\n\nu1\n\nb\n\nu2\n\nu3"}]
    # A system turn last: a note at the end of the last user message.
    tail = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "x"},
            {"role": "system", "content": "s"}]  # fmt: skip
    assert as_user_notes(tail)[0] == {"role": "user", "content": "u\n\ns"}


def test_a_plain_conversation_renders_once_as_it_is():
    calls = []

    def render(shape: list[dict]) -> str:
        calls.append(shape)
        raise TemplateRenderError("no")

    msgs = [{"role": "system", "content": SYS}, {"role": "user", "content": "Hi"}]
    with pytest.raises(TemplateRenderError):
        render_turns(render, msgs)
    assert calls == [msgs]  # a leading system message needs no care
