"""Chat templates from GGUF metadata, rendered in a sandboxed Jinja environment.

A template comes from a model file or from whoever created a custom model, so it is
untrusted code. It renders in engine/template_sandbox.py's environment: Jinja's sandbox
keeps it away from Python's internals, and a budget of steps, time and size bounds what
one render may cost (every loop iteration, call and operator is a step, and no string
or list over MAX_SIZE is built). A template that runs out of its budget fails that
request with a clear error instead of holding the thread that renders it.

A template that ran out of its budget is marked (on its ChatTemplate, so in the process
that rendered it): a later render with as much input or more, and the same shape (with
tools or without), fails at once with the same error instead of spending another whole
budget. A smaller input is still tried, so one oversized conversation does not take a
model's template away from everyone else.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.defaults import DEFAULT_NAMESPACE

from .template_budget import (
    CHARS_PER_STEP,
    MAX_SECONDS,
    MAX_SIZE,
    MAX_STEPS,
    TemplateLimit,
    TemplateRenderError,
    size_of,
    too_big,
)
from .template_sandbox import BoundedEnvironment

__all__ = [
    "CHARS_PER_STEP", "CHATML", "MAX_SECONDS", "MAX_SIZE", "MAX_STEPS", "ChatTemplate",
    "TemplateLimit", "TemplateRenderError",
]  # fmt: skip

# Used when a GGUF carries no template: ChatML, the most common format.
# The names a render fills itself, and the functions every template may call: a request's
# extra variables (chat_template_kwargs) never take them.
OWN_NAMES = frozenset(
    {"messages", "add_generation_prompt", "bos_token", "eos_token", "tools",
     "raise_exception", "strftime_now", *DEFAULT_NAMESPACE}
)  # fmt: skip

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise TemplateRenderError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' ``tojson``: keys in their order, no HTML escaping (Jinja's own
    sorts keys and escapes ``<``, which changes what tool-aware templates write)."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class ChatTemplate:
    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = "") -> None:
        env = BoundedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = env.bounded(_tojson, "tojson")
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.source = source or CHATML
        self._env = env
        self._template = env.from_string(self.source)
        self.bos_token = bos_token
        self.eos_token = eos_token
        # Marks: with tools or not -> (the smallest input it ran out of budget on, why).
        self._marks: dict[bool, tuple[int, str]] = {}
        self._lock = threading.Lock()

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        variables: dict[str, Any] | None = None,
    ) -> str:
        """``tools``: the OpenAI-shaped tool list, for templates that describe tools
        themselves (None for the others: the generic format puts them in the messages).
        ``variables``: more variables for the template (its thinking switch, a request's
        chat_template_kwargs); they never replace the names the render sets itself."""
        shape = tools is not None
        size = -1
        mark = self._marks.get(shape)
        if mark is not None:
            size = _input_size(messages, tools)
            if size >= mark[0]:
                raise TemplateLimit(
                    f"{mark[1]}; it did so on an earlier request with no more input than "
                    "this one, so it is marked and not rendered again for such requests"
                )
        try:
            return self._render(messages, add_generation_prompt, tools, variables)
        except TemplateLimit as exc:
            if size < 0:
                size = _input_size(messages, tools)
            with self._lock:
                mark = self._marks.get(shape)
                if mark is None or size < mark[0]:
                    self._marks[shape] = (size, str(exc))
            raise

    def _render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None,
        variables: dict[str, Any] | None = None,
    ) -> str:
        names = {
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "tools": tools,
        }
        if variables:  # never over the render's own names or the template's functions
            names = {**{k: v for k, v in variables.items() if k not in OWN_NAMES}, **names}
        env = self._env
        env.begin()
        try:
            out: list[str] = []
            size = 0
            for piece in self._template.generate(**names):
                size += len(piece)
                if size > MAX_SIZE:
                    raise too_big(size)
                out.append(piece)
            return "".join(out)
        except TemplateRenderError:
            raise
        except TemplateError as exc:
            raise TemplateRenderError(f"chat template error: {exc}") from exc
        except (MemoryError, RecursionError, OverflowError) as exc:
            raise TemplateLimit(
                f"chat template ran out of its budget: {type(exc).__name__}"
            ) from exc
        finally:
            env.end()


def _input_size(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """How much a render was given, to compare requests with (about its JSON length)."""
    size, _ = size_of((messages, tools), sys.maxsize, sys.maxsize)
    return size
