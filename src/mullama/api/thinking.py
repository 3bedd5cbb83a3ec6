"""Reasoning models: how a chat template writes a model's thinking (``ThinkFormat``, found
once per template by rendering it on small probes, as api/toolsyntax.py finds tools), what
a request asks of it (``Think``), a model's defaults (``ThinkDefaults``), and the plan
that makes of them the engine's ``ThinkSyntax`` and the template's variables.

A format is recognised by its markers in what the template writes: Qwen3's, DeepSeek's
and most others' ``<think>``/``</think>``, Seed-OSS's ``<seed:think>``, MiniMax-M3's
``<mm:think>``, Mistral's ``[THINK]``/``[/THINK]``, Cohere's ``<|START_THINKING|>``, and
gpt-oss's harmony channels (``<|channel|>analysis<|message|>`` ... ``<|end|>``, the answer
after ``<|start|>assistant<|channel|>final<|message|>``). The probes find too whether the
generation prompt already opens the block (``opened``), the variable that turns thinking
on or off (``switch``) and the message key under which the template writes an earlier
turn's reasoning (``history_key``). A template whose renders show none of the markers
has no format: its replies stream as they always did.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..engine.chat_template import OWN_NAMES, ChatTemplate, TemplateLimit
from ..engine.protocol import ThinkSyntax
from ..errors import InvalidParameter

# (family, open, close, answer), the longer markers first.
_MARKERS = (
    ("harmony", "<|channel|>analysis<|message|>", "<|end|>",
     "<|start|>assistant<|channel|>final<|message|>"),
    ("seed", "<seed:think>", "</seed:think>", ""),
    ("minimax", "<mm:think>", "</mm:think>", ""),
    ("mistral", "[THINK]", "[/THINK]", ""),
    ("command", "<|START_THINKING|>", "<|END_THINKING|>", ""),
    ("think", "<think>", "</think>", ""),
)  # fmt: skip
# The variables a template may read to turn thinking on and off, with their on and off
# values (Seed-OSS's thinking_budget: -1 no limit, 0 no thinking).
_SWITCHES = (
    ("enable_thinking", True, False),
    ("thinking", True, False),
    ("reasoning_effort", "high", "low"),
    ("thinking_budget", -1, 0),
)
# The ways an earlier assistant turn's reasoning may be given to a template: a message
# key, or (THINKING_BLOCK) a ``thinking`` block first in the message's content list
# (Mistral's).
THINKING_BLOCK = "content:thinking"
_HISTORY_KEYS = ("reasoning_content", "thinking", THINKING_BLOCK)
# Variables the chat's own request fills and the functions templates call; a request's
# chat_template_kwargs may not set them.
RESERVED = OWN_NAMES
# reasoning_effort -> thinking tokens, for a template that does not read the effort.
EFFORT_BUDGET: dict[str, int | None] = {
    "minimal": 256, "low": 1024, "medium": 4096, "high": None, "xhigh": None,
}  # fmt: skip
# reasoning_effort -> the values gpt-oss's template knows.
_EFFORT_WORD = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
                "xhigh": "high"}  # fmt: skip
REASONING_FORMATS = ("none", "deepseek", "auto")

_USER = "mullama probe question"
_ANSWER = "mullama probe answer"
_REASON = "mullama probe reasoning"


@dataclass
class Think:
    """What a request asks of the model's thinking, in any dialect's words: ``on`` (None:
    the model's default), ``effort`` ("none", "minimal", "low", "medium", "high" or
    "xhigh": a template that reads it gets it, others a budget from it; "none" turns
    thinking off) and ``budget`` (thinking tokens; None: no limit asked)."""

    on: bool | None = None
    effort: str | None = None
    budget: int | None = None
    # The request field that asked, reported as ignored for a model whose template has no
    # thinking format ("": the dialect reports it itself, or nothing was asked).
    asked_by: str = ""


@dataclass(frozen=True)
class ThinkFormat:
    """How a chat template writes the thinking: the block's ``open`` and ``close``
    markers, the ``answer`` marker that may begin the answer after it, whether the
    generation prompt opens the block itself (``opened``, with thinking on), the variable
    that turns thinking on and off (``switch``: ``enable_thinking``, ``thinking``,
    ``reasoning_effort``, ``thinking_budget``, or None) and where an earlier assistant
    turn's reasoning goes (``history_key``: a message key, THINKING_BLOCK, or None: the
    template drops it)."""

    family: str
    open: str
    close: str
    answer: str = ""
    opened: bool = False
    switch: str | None = None
    history_key: str | None = None

    def syntax(self, budget: int | None = None, force_open: bool = False) -> ThinkSyntax:
        """The engine's description of the block, with a request's budget."""
        return ThinkSyntax(self.open, self.close, self.answer, budget, force_open)


@dataclass(frozen=True)
class ThinkDefaults:
    """A model's thinking defaults (global flags, under a custom model's parameters,
    under --model-opt): ``reasoning_format`` ("none": no separation, the raw text;
    "deepseek" or "auto": separated), ``on`` (None: the template's own default, thinking
    on where its switch allows) and ``budget`` (thinking tokens; None: no limit)."""

    reasoning_format: str = "auto"
    on: bool | None = None
    budget: int | None = None

    @classmethod
    def layered(cls, reasoning_format: str, *layers: Mapping[str, Any]) -> ThinkDefaults:
        """Defaults from ``think``, ``reasoning_budget`` and ``reasoning_format`` values,
        later layers over earlier ones (unset values skipped). A budget of -1 is no limit,
        and 0 turns thinking off (llama-server's --reasoning-budget)."""
        on: bool | None = None
        budget: int | None = None
        for layer in layers:
            reasoning_format = layer.get("reasoning_format") or reasoning_format
            if layer.get("reasoning_budget") is not None:
                budget = int(layer["reasoning_budget"])
            if layer.get("think") is not None:
                on = bool(layer["think"])
        if budget == 0:
            return cls(reasoning_format, False if on is None else on, None)
        return cls(reasoning_format, on, None if budget is None or budget < 0 else budget)


class _Probes:
    """The formats found per template source (the last 64), None included. One probe
    runs at a time; a template that runs out of its budget on a probe has no format (its
    request's own render fails as it would have)."""

    def __init__(self, size: int = 64) -> None:
        self._results: OrderedDict[str, ThinkFormat | None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def cached(self, source: str) -> tuple[bool, ThinkFormat | None]:
        """(probed already, what was found)."""
        if source in self._results:
            return True, self._results[source]
        return False, None

    def get(self, source: str) -> ThinkFormat | None:
        with self._lock:
            known, found = self.cached(source)
            if known:
                return found
            try:
                found = _probe(source)
            except TemplateLimit:
                found = None
            self._results[source] = found
            while len(self._results) > self._size:
                self._results.popitem(last=False)
            return found


_PROBES = _Probes()


def template_thinking(source: Any) -> ThinkFormat | None:
    """How a chat template writes thinking (probed once per source; this thread renders
    it: from the event loop, use ``probe``). None: no format recognised, no template
    (ChatML), or a remote engine's (which separates the thinking itself)."""
    if not isinstance(source, str) or not source:
        return None
    return _PROBES.get(source)


async def probe(source: Any) -> ThinkFormat | None:
    """template_thinking, with any render done off the event loop."""
    if not isinstance(source, str) or not source:
        return None
    known, found = _PROBES.cached(source)
    if known:
        return found
    return await asyncio.to_thread(_PROBES.get, source)


def _probe(source: str) -> ThinkFormat | None:
    """Render the template on a one-question conversation with each switch on and off,
    and on an answered one with reasoning under each history key; read the format off."""
    try:
        template = ChatTemplate(source)
    except Exception:  # noqa: BLE001 - a template that does not compile writes nothing
        return None
    user = {"role": "user", "content": _USER}

    def render(messages: list[dict], gen: bool, variables: dict | None = None) -> str | None:
        try:
            return template.render([user, *messages], gen, None, variables)
        except TemplateLimit:
            raise
        except Exception:  # noqa: BLE001 - a probe the template refuses: not written
            return None

    plain = render([], True)
    prompts = {(name, value): render([], True, {name: value})
               for name, on, off in _SWITCHES for value in (on, off)}  # fmt: skip
    histories = {
        key: [render([_answered(key)], False), render(_called(key), True)] for key in _HISTORY_KEYS
    }
    written = [r for r in (plain, *prompts.values(), *sum(histories.values(), [])) if r]
    switch = next(
        (name for name, on, off in _SWITCHES
         if prompts[(name, on)] is not None and prompts[(name, off)] is not None
         and prompts[(name, on)] != prompts[(name, off)]),
        None,
    )  # fmt: skip
    on_prompt = (plain if switch is None else prompts[(switch, _on_value(switch))]) or ""
    # The markers: both written somewhere, or the generation prompt opening the block.
    marker = next(
        (m for m in _MARKERS
         if on_prompt.rstrip().endswith(m[1]) or any(m[1] in r and m[2] in r for r in written)),
        None,
    )  # fmt: skip
    if marker is None:
        return None
    family, open_, close, answer = marker
    opened = on_prompt.rstrip().endswith(open_)
    history = next((k for k, rs in histories.items() if any(r and _REASON in r for r in rs)), None)
    return ThinkFormat(family, open_, close, answer, opened, switch, history)


def _on_value(switch: str) -> Any:
    return next(on for name, on, _ in _SWITCHES if name == switch)


def _answered(key: str) -> dict[str, Any]:
    """An assistant turn with reasoning, given under ``key``."""
    if key == THINKING_BLOCK:
        content = [{"type": "thinking", "thinking": _REASON}, {"type": "text", "text": _ANSWER}]
        return {"role": "assistant", "content": content}
    return {"role": "assistant", "content": _ANSWER, key: _REASON}


def _called(key: str) -> list[dict[str, Any]]:
    """An assistant turn that calls a tool, with reasoning under ``key``, and the tool's
    result (templates that keep only the reasoning of the turn in progress: Kimi's,
    gpt-oss's)."""
    call = {"id": "mullama01", "type": "function",
            "function": {"name": "mullama_probe_fn", "arguments": {"a": "b"}}}  # fmt: skip
    turn = {**_answered(key), "tool_calls": [call]}
    if key != THINKING_BLOCK:
        turn["content"] = ""
    tool = {"role": "tool", "tool_call_id": "mullama01", "name": "mullama_probe_fn", "content": "r"}
    return [turn, tool]


def template_variables(kwargs: Any) -> dict[str, Any]:
    """A request's ``chat_template_kwargs``, checked: a mapping whose names are not the
    chat's own (``messages``, ``tools``, ...; 400 naming the field)."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise InvalidParameter(
            "chat_template_kwargs must be an object", param="chat_template_kwargs"
        )
    taken = sorted(RESERVED.intersection(kwargs))
    if taken:
        raise InvalidParameter(
            f"chat_template_kwargs may not set {', '.join(taken)}: the request's own fields "
            "and the template's functions have these names",
            param="chat_template_kwargs",
        )
    return dict(kwargs)


def _wanted(think: Think, kwargs: Mapping[str, Any], defaults: ThinkDefaults) -> bool | None:
    """Whether thinking is on: the request's ``on``, else its chat_template_kwargs'
    switch, else its effort ("none": off; another: on), else the model's default."""
    if think.on is not None:
        return think.on
    for name in ("enable_thinking", "thinking"):
        if isinstance(kwargs.get(name), bool):
            return bool(kwargs[name])
    if think.effort is not None:
        return think.effort != "none"
    return defaults.on


def plan_thinking(
    fmt: ThinkFormat | None,
    think: Think,
    defaults: ThinkDefaults = ThinkDefaults(),
    kwargs: Any = None,
    constrained: bool = False,
) -> tuple[ThinkSyntax | None, dict[str, Any]]:
    """A request's thinking as the engine gets it: the ThinkSyntax (None: no separation)
    and the template's variables. ``constrained``: a JSON schema or a forced tool call
    holds the answer, which then comes after a thinking block the engine opens itself
    unless thinking is off.

    Off: the template's switch off (``enable_thinking``/``thinking`` false, Seed's
    ``thinking_budget`` 0, gpt-oss's ``reasoning_effort`` low) and a budget of 0, so a
    block the model opens all the same closes at once. On (asked): the switch on and
    ``force_open``. Neither asked: the switch on (a template's thinking is on unless
    turned off, as llama-server renders it). An effort goes to a template that reads
    ``reasoning_effort`` as it is (minimal: low, xhigh: high), to others as a budget
    (EFFORT_BUDGET); a request's own budget wins over its effort's, and either over the
    model's default budget. ``chat_template_kwargs`` go to the template last, over all
    of these."""
    variables = template_variables(kwargs)
    if fmt is None:
        return None, variables
    on = _wanted(think, variables, defaults)
    effort = think.effort if think.effort in _EFFORT_WORD else None
    budget = think.budget
    if budget is None and effort is not None and fmt.switch != "reasoning_effort":
        budget = EFFORT_BUDGET[effort]
    if budget is None:
        budget = defaults.budget
    own: dict[str, Any] = {}
    if on is False:
        budget = 0
        if fmt.switch is not None:
            own[fmt.switch] = next(off for name, _, off in _SWITCHES if name == fmt.switch)
    elif fmt.switch in ("enable_thinking", "thinking"):
        own[fmt.switch] = True
    elif fmt.switch == "reasoning_effort" and effort is not None:
        own["reasoning_effort"] = _EFFORT_WORD[effort]
    elif fmt.switch == "thinking_budget" and budget is not None:
        own["thinking_budget"] = budget
    variables = {**own, **variables}
    if defaults.reasoning_format == "none":
        return None, variables
    force_open = on is True or (constrained and on is not False)
    return fmt.syntax(budget, force_open), variables


def history_for(messages: list[dict[str, Any]], fmt: ThinkFormat | None) -> list[dict[str, Any]]:
    """The conversation with earlier assistant turns' reasoning (which the dialects put
    under ``reasoning_content``) where the template reads it: under its ``history_key``,
    as a thinking block first in the content (Mistral's), or removed where the template
    drops it. Unchanged for a template with no recognised format."""
    if fmt is None or fmt.history_key == "reasoning_content":
        return messages
    return [_moved(m, fmt.history_key) if "reasoning_content" in m else m for m in messages]


def _moved(message: dict[str, Any], key: str | None) -> dict[str, Any]:
    out = dict(message)
    reasoning = out.pop("reasoning_content")
    if key is None or not reasoning:
        return out
    if key != THINKING_BLOCK:
        out[key] = reasoning
        return out
    content = out.get("content")
    blocks = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
    out["content"] = [{"type": "thinking", "thinking": reasoning}, *blocks]
    return out
