"""Chat templates from GGUF metadata, rendered in a sandboxed Jinja environment.

A template comes from a model file or from whoever created a custom model, so it is
untrusted code: Jinja's sandbox keeps it away from Python's internals, and a budget
bounds what one render may cost (a template that loops for ever, or builds a huge
string, fails that request with a clear error instead of holding the worker's reader
thread, and with it every request of the model):

- at most MAX_STEPS steps: each element a ``range`` yields, each call, attribute or
  item read, operator and filter;
- at most MAX_SECONDS of time (checked as steps are taken);
- no value (string, list) and no output longer than MAX_SIZE, refused before it is
  built where the size is known in advance (``'x' * n``, ``'x'.ljust(n)``, filters).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_STEPS = 2_000_000
MAX_SECONDS = 5.0
MAX_SIZE = 8 * 1024 * 1024  # characters (or items) in one value, and in the output

# Used when a GGUF carries no template: ChatML, the most common format.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateRenderError(ValueError):
    """The template could not render these messages (a client-side problem)."""


class TemplateLimit(TemplateRenderError):
    """A render went past its budget of steps, time or size."""


class _Budget:
    __slots__ = ("deadline", "steps")

    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + MAX_SECONDS


class _Range:
    """``range`` for templates: a sequence whose iteration counts against the budget."""

    def __init__(self, env: _BoundedEnvironment, *args: int) -> None:
        self._env = env
        self._range = range(*args)

    def __iter__(self) -> Iterator[int]:
        tick = self._env.tick
        for i in self._range:
            tick()
            yield i

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, i: Any) -> Any:
        return self._range[i]


def _too_big(what: str, n: int) -> TemplateLimit:
    return TemplateLimit(f"chat template builds {what} of {n} items (the limit is {MAX_SIZE})")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._local = threading.local()
        self.globals["range"] = lambda *args: _Range(self, *args)
        self.filters = {name: self._bounded(f) for name, f in self.filters.items()}

    def begin(self) -> None:
        self._local.budget = _Budget()

    def end(self) -> None:
        self._local.budget = None

    def tick(self) -> None:
        budget = getattr(self._local, "budget", None)
        if budget is None:
            return
        budget.steps += 1
        if budget.steps > MAX_STEPS:
            raise TemplateLimit(
                f"chat template took more than {MAX_STEPS} steps (a loop that does not end?)"
            )
        if not budget.steps & 1023 and time.monotonic() > budget.deadline:
            raise TemplateLimit(f"chat template ran for more than {MAX_SECONDS:g} s")

    @staticmethod
    def checked(value: Any) -> Any:
        if isinstance(value, str | list | tuple | dict) and len(value) > MAX_SIZE:
            raise _too_big("a value", len(value))
        return value

    @classmethod
    def _check_args(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for v in (*args, *kwargs.values()):
            if isinstance(v, int) and not isinstance(v, bool) and v > MAX_SIZE:
                raise TemplateLimit(f"chat template passes the number {v}, too large")
            cls.checked(v)

    def _bounded(self, f: Any) -> Any:
        @functools.wraps(f)  # keeps Jinja's pass_context / pass_environment marks
        def bounded(*args: Any, **kwargs: Any) -> Any:
            self.tick()
            self._check_args(args, kwargs)
            return self.checked(f(*args, **kwargs))

        return bounded

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self.tick()
        __self._check_args(args, kwargs)
        return __self.checked(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.tick()
        return self.checked(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.tick()
        return self.checked(super().getitem(obj, argument))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.tick()
        if operator == "**" and isinstance(right, int) and abs(right) > 4096:
            raise TemplateLimit(f"chat template raises a number to the power {right}")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    if len(seq) * n > MAX_SIZE:
                        raise _too_big("a value", len(seq) * n)
        return self.checked(super().call_binop(context, operator, left, right))


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
        env = _BoundedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = env._bounded(_tojson)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.source = source or CHATML
        self._env = env
        self._template = env.from_string(self.source)
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """``tools``: the OpenAI-shaped tool list, for templates that describe tools
        themselves (None for the others: the generic format puts them in the messages)."""
        env = self._env
        env.begin()
        try:
            out: list[str] = []
            size = 0
            for piece in self._template.generate(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                tools=tools,
            ):
                size += len(piece)
                if size > MAX_SIZE:
                    raise _too_big("a prompt", size)
                out.append(piece)
            return "".join(out)
        except TemplateRenderError:
            raise
        except TemplateError as exc:
            raise TemplateRenderError(f"chat template error: {exc}") from exc
        except (MemoryError, RecursionError, OverflowError) as exc:
            raise TemplateLimit(f"chat template failed: {type(exc).__name__}") from exc
        finally:
            env.end()
