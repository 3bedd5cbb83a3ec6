"""System turns the way the model's chat template can express them.

The agents write conversations that many templates were not written for: Claude Code
sends a ``system`` message after the user's first message (its environment and the
turn's instructions); Codex sends several ``developer`` messages, then two user messages
in a row; OpenAI's chat API allows ``system`` and ``developer`` messages anywhere.
Templates differ: ChatML (SmolLM2, Qwen) writes any role anywhere; Gemma's and
Mistral's raise unless a leading system message is followed by alternating user and
assistant turns; some drop what they do not expect without a word.

What a template can express is found on the conversation itself. A conversation with a
``developer`` message or a ``system`` message after the first turn is tried, in order:

1. as sent: the template renders it and every system and developer text is in it;
2. merged: every system and developer text in one leading system message, and user
   messages that follow each other joined into one (any template with a system role,
   however strict about turns, takes that);
3. as notes of the user's turns: each system text joined to the next user message (the
   last one before it when none follows), for templates without a system role.

The first that renders and shows every text is the prompt; if none does, the error of
the first attempt is the request's. Any other conversation renders once, as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .chat_template import TemplateLimit, TemplateRenderError

Render = Callable[[list[dict[str, Any]]], str]
_SYSTEM = ("system", "developer")


def _is_system(m: dict[str, Any]) -> bool:
    return m.get("role") in _SYSTEM


def _needs_care(messages: list[dict[str, Any]]) -> bool:
    """A developer message, or a system message after the first turn."""
    begun = False
    for m in messages:
        if m.get("role") == "developer":
            return True
        if not _is_system(m):
            begun = True
        elif begun:
            return True
    return False


def _text(m: dict[str, Any]) -> str:
    content = m.get("content")
    return content if isinstance(content, str) else ""


def _shows(prompt: str, text: str) -> bool:
    """The template wrote ``text`` (templates may trim a message's content)."""
    probe = text.strip()[:200]
    return not probe or probe in prompt


def _plain_user(m: dict[str, Any]) -> bool:
    return m.get("role") == "user" and isinstance(m.get("content"), str)


def _join_users(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """User messages that follow each other as one (strict templates alternate turns)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if out and _plain_user(out[-1]) and _plain_user(m):
            out[-1] = {**out[-1], "content": f"{_text(out[-1])}\n\n{_text(m)}"}
        else:
            out.append(dict(m))
    return out


def merged(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every system and developer text in one leading system message; user messages that
    follow each other joined."""
    texts = [_text(m) for m in messages if _is_system(m)]
    rest = _join_users([m for m in messages if not _is_system(m)])
    return [{"role": "system", "content": "\n\n".join(texts)}, *rest]


def as_user_notes(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each system and developer text joined to the next user message (the last one
    before it when none follows; a user message of its own when there is neither);
    user messages that follow each other joined."""
    out = [dict(m) for m in messages]
    drop: set[int] = set()
    pending: list[str] = []  # system texts waiting for the next user message
    for i, m in enumerate(out):
        if _is_system(m):
            pending.append(_text(m))
            drop.add(i)
        elif m.get("role") == "user" and pending:
            out[i]["content"] = "\n\n".join([*pending, _text(m)])
            pending = []
    if pending:
        last = next((j for j in range(len(out) - 1, -1, -1) if out[j].get("role") == "user"), None)
        if last is not None:
            out[last]["content"] = "\n\n".join([_text(out[last]), *pending])
        else:
            out.append({"role": "user", "content": "\n\n".join(pending)})
    return _join_users([m for i, m in enumerate(out) if i not in drop])


def render_turns(render: Render, messages: list[dict[str, Any]]) -> str:
    """The prompt of ``messages`` through ``render`` (the template, with the request's
    other arguments bound), system turns as the template can express them.
    TemplateLimit (a template out of its budget) is never retried."""
    if not _needs_care(messages):
        return render(messages)
    texts = [_text(m) for m in messages if _is_system(m)]
    first_error: TemplateRenderError | None = None
    prompt: str | None = None
    for shape in (messages, merged(messages), as_user_notes(messages)):
        try:
            prompt = render(shape)
        except TemplateLimit:
            raise
        except TemplateRenderError as exc:
            first_error = first_error or exc
            continue
        if all(_shows(prompt, t) for t in texts):
            return prompt
    if prompt is None:
        assert first_error is not None
        raise first_error
    return prompt
