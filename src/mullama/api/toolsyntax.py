"""What a chat template knows of tools, found once per template by rendering it on small
probe conversations (no list of model names).

- ``tools``: does the template write the tools it is given (the ``tools`` variable)?
- ``tool_calls``: does it write an assistant turn's calls? Then the syntax of a call is
  read off the render of a sentinel call: the text before its JSON object (``begin``,
  e.g. Hermes/Qwen's ``<tool_call>``), after it (``end``), between two calls
  (``separator``), a list around them (Mistral's ``[TOOL_CALLS][ ... ]``) and the key of
  the arguments (``arguments``, or Llama 3's ``parameters``).
- ``parallel``: does a turn with two calls render both?
- ``system``: is a system message written (some templates refuse the role)?

A template that writes both tools and calls is used natively; any other gets the generic
format (api/tools.py), whose syntax is the ``GENERIC`` below.

A probe renders the template a few times, each render within its budget
(engine/template_budget.py): up to seconds for a hostile template, so the API probes off
the event loop (``probe``). A template that runs out of its budget on a probe fails the
request that asked (a client error) and is remembered as such: later requests with tools
fail at once instead of probing it again.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import string
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from ..engine.chat_template import ChatTemplate, TemplateLimit
from ..engine.protocol import CallSyntax
from ..engine.remote import REMOTE_SYNTAX
from ..errors import InvalidParameter

# The generic format: a reply that is one JSON object holding a list of calls.
GENERIC = CallSyntax(open='{"tool_calls": [', separator=", ", close="]}", args_key="parameters")

_ALNUM = string.ascii_letters + string.digits
_FN = "mullama_probe_fn"
_FN2 = "mullama_probe_other"
_ARGS = {"mullama_probe_arg": "mullama_probe_value"}
_USER = "mullama probe question"
_SYSTEM = "mullama probe system"
_TOOL = {
    "type": "function",
    "function": {
        "name": _FN,
        "description": "probe",
        "parameters": {"type": "object", "properties": {"mullama_probe_arg": {"type": "string"}}},
    },
}
_TOOL2 = {"type": "function", "function": {**_TOOL["function"], "name": _FN2}}


def _call(name: str, k: int, call_id: str | None = None) -> dict:
    return {
        "id": call_id or f"mullama0{k}",  # 9 letters and digits: Mistral's templates insist
        "type": "function",
        "function": {"name": name, "arguments": dict(_ARGS)},
    }


@dataclass(frozen=True)
class TemplateTools:
    tools: bool
    tool_calls: bool
    parallel: bool
    system: bool
    syntax: CallSyntax  # the template's own, or GENERIC
    short_ids: bool = False  # call ids of 9 letters and digits (Mistral's templates)

    def call_id(self) -> str:
        """A new call id the template accepts back in the conversation's history."""
        if self.short_ids:
            return "".join(secrets.choice(_ALNUM) for _ in range(9))
        return f"call_{uuid.uuid4().hex[:24]}"

    @property
    def native(self) -> bool:
        return self.tools and self.tool_calls

    @property
    def family(self) -> str:
        """A name for the docs and logs: what the syntax looks like."""
        if not self.native:
            return "generic"
        syn = self.syntax
        if syn.open:
            return "mistral" if "TOOL_CALLS" in syn.open else "list"
        if syn.begin.strip():
            return "hermes" if "tool_call" in syn.begin else "tagged"
        return "llama3" if syn.args_key == "parameters" else "json"


class _Probes:
    """The probes' results per template source (the last 64), a template that ran out of
    its budget included. One probe runs at a time: requests that arrive meanwhile for the
    same template wait for its result instead of probing it again."""

    def __init__(self, size: int = 64) -> None:
        self._results: OrderedDict[str | None, TemplateTools | TemplateLimit] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def cached(self, source: str | None) -> TemplateTools | None:
        found = self._results.get(source)
        if isinstance(found, TemplateLimit):
            raise TemplateLimit(
                f"{found}; it did so when it was first probed, so it is marked and requests "
                "with tools fail at once"
            )
        return found

    def get(self, source: str | None) -> TemplateTools:
        found = self.cached(source)
        if found is not None:
            return found
        with self._lock:
            found = self.cached(source)
            if found is not None:
                return found
            try:
                found = _probe(source)
            except TemplateLimit as exc:
                self._keep(source, exc)
                raise
            self._keep(source, found)
            return found

    def _keep(self, source: str | None, result: TemplateTools | TemplateLimit) -> None:
        self._results[source] = result
        while len(self._results) > self._size:
            self._results.popitem(last=False)


_PROBES = _Probes()


def template_tools(source: str | None) -> TemplateTools:
    """What a template knows of tools (probed once per source; this thread renders it:
    from the event loop, use ``probe``). TemplateLimit: the template ran out of its
    budget on a probe, now or before."""
    return _PROBES.get(source)


async def probe(source: str | None) -> TemplateTools:
    """template_tools, with any render done off the event loop; a template that runs out
    of its budget is the request's error (400)."""
    try:
        found = _PROBES.cached(source)
        if found is None:
            found = await asyncio.to_thread(_PROBES.get, source)
    except TemplateLimit as exc:
        raise InvalidParameter(f"{exc} (writing the request's tools)", param="tools") from None
    return found


def _probe(source: str | None) -> TemplateTools:
    """Probe a template. A template that fails on a probe simply does not support what
    the probe asks; one that runs out of its budget fails the probe (TemplateLimit)."""
    template = ChatTemplate(source)
    user = [{"role": "user", "content": _USER}]

    def render(messages: list[dict], gen: bool, tools: list[dict] | None) -> str | None:
        try:
            return template.render(messages, gen, tools)
        except TemplateLimit:
            raise
        except Exception:  # noqa: BLE001 - a probe the template refuses: not supported
            return None

    with_tools = render(user, True, [_TOOL]) or ""
    system = render([{"role": "system", "content": _SYSTEM}, *user], True, None) or ""
    caps = dict(
        tools=_FN in with_tools,
        system=_SYSTEM in system,
    )
    one = render([*user, {"role": "assistant", "content": "", "tool_calls": [_call(_FN, 0)]}],
                 False, [_TOOL])  # fmt: skip
    two = render(
        [*user, {"role": "assistant", "content": "", "tool_calls": [_call(_FN, 0), _call(_FN2, 1)]}],
        False, [_TOOL, _TOOL2],
    )  # fmt: skip
    syntax = _read_syntax(one, two, with_tools) if one and _FN in one.split(_USER, 1)[-1] else None
    # Used only if writing the probe calls in the syntax read off gives back exactly what
    # the template wrote: one call, and (for parallel calls) two.
    if syntax is not None and not _writes(syntax, one, [_FN]):
        syntax = None
    parallel = syntax is not None and two is not None and _writes(syntax, two, [_FN, _FN2])
    if syntax is None or not caps["tools"]:  # the generic format, which lists calls
        return TemplateTools(caps["tools"], syntax is not None, True, caps["system"], GENERIC)
    long_id = _call(_FN, 0, f"call_{'0' * 24}")
    short = render([*user, {"role": "assistant", "content": "", "tool_calls": [long_id]}],
                   False, [_TOOL]) is None  # fmt: skip
    return TemplateTools(True, True, parallel, caps["system"], syntax, short)


def _writes(syntax: CallSyntax, rendered: str, names: list[str]) -> bool:
    turn = rendered.split(_USER, 1)[1]
    objects = [_object_at(turn, n) for n in names]
    if any(o is None for o in objects):
        return False
    calls = [syntax.begin + turn[o[0] : o[1]] + syntax.end for o in objects if o]
    return syntax.open + syntax.separator.join(calls) + syntax.close in turn


_DECODER = json.JSONDecoder()
_TAG = re.compile(r"<([A-Za-z_|]+)>")


def _read_syntax(one: str, two: str | None, prompt: str) -> CallSyntax | None:
    """The call syntax, from the render of one sentinel call (and of two, for the
    separator and a list's brackets)."""
    turn = one.split(_USER, 1)[1]
    found = _object_at(turn, _FN)
    if found is None:
        return None
    start, end, obj = found
    args_key = next((k for k in ("arguments", "parameters") if k in obj), None)
    if args_key is None or obj.get(args_key) != _ARGS:
        return None  # arguments written some other way: not a shape we can constrain
    before = turn[:start]
    # The assistant header is what the generation prompt ends with; the begin marker is
    # what the template writes after it, ahead of the call.
    header = _longest_suffix_in(before, prompt)
    lead = before[len(header) :] if header else before
    begin = _marker_tail(lead)
    after = turn[end:]
    open_ = ""
    if begin.rstrip().endswith("["):  # a list of call objects (Mistral)
        open_, begin = begin, ""
    separator, close, end_marker = "", "", ""
    if two is not None and _FN2 in two:
        turn2 = two.split(_USER, 1)[1]
        first = _object_at(turn2, _FN)
        second = _object_at(turn2, _FN2)
        if first and second:
            between = turn2[first[1] : second[0]]
            if begin and between.endswith(begin):
                between = between[: -len(begin)]
            end_marker, separator = _split_between(between, after, bool(open_))
    if not end_marker and not separator:
        end_marker = _closing(after, begin)
    if open_:
        close = "]" if after.lstrip().startswith("]") else ""
        end_marker = ""
    return CallSyntax(open=open_, begin=begin, end=end_marker, separator=separator,
                      close=close, args_key=args_key)  # fmt: skip


def _object_at(text: str, name: str) -> tuple[int, int, dict] | None:
    """The JSON object in ``text`` whose ``name`` is ``name``: its span and value."""
    at = text.find(f'"{name}"')
    while at >= 0:
        start = text.rfind("{", 0, at)
        while start >= 0:
            try:
                obj, end = _DECODER.raw_decode(text, start)
            except ValueError:
                obj, end = None, -1
            if isinstance(obj, dict) and obj.get("name") == name and end > at:
                return start, end, obj
            start = text.rfind("{", 0, start)
        at = text.find(f'"{name}"', at + 1)
    return None


def _longest_suffix_in(before: str, prompt: str) -> str:
    """The longest start of ``before`` that the generation prompt ends with (the
    assistant header both share)."""
    for n in range(len(before), 0, -1):
        if prompt.endswith(before[:n]):
            return before[:n]
    return ""


def _marker_tail(lead: str) -> str:
    """The marker ahead of a call: the last tag or bracket of the text before it, with
    the whitespace after it (``<tool_call>\\n``, ``[TOOL_CALLS][``, or ``""``)."""
    stripped = lead.rstrip()
    tail = lead[len(stripped) :]
    m = re.search(r"(<[^<>\s]+>|\[[A-Z_]+\]\[?|\[)$", stripped)
    return (m.group(1) + tail) if m else ""


def _closing(after: str, begin: str) -> str:
    """The end marker after a call: the tag closing ``begin``'s, with the whitespace
    before it (``\\n</tool_call>``)."""
    m = _TAG.search(begin)
    if not m:
        return ""
    close = f"</{m.group(1)}>"
    at = after.find(close)
    if at < 0 or after[:at].strip():
        return ""
    return after[: at + len(close)]


def _split_between(between: str, after: str, listed: bool) -> tuple[str, str]:
    """The end marker and the separator, from the text between two calls."""
    if listed:
        return "", between  # ", " inside the list
    for n in range(len(between), -1, -1):
        if after.startswith(between[:n]):
            return between[:n], between[n:]
    return "", between


GENERIC_TEMPLATE = TemplateTools(False, False, True, True, GENERIC)
# A remote engine's (models/remote.py): it takes tools and calls in OpenAI's shape.
REMOTE_TOOLS = TemplateTools(True, True, True, True, REMOTE_SYNTAX)
