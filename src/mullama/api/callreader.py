"""Reading a reply in a tool plan's call syntax as it is written (api/tools.py makes the
plan): the text outside the calls, each call's start (its name), the pieces of its
arguments and its end. Whole replies (``ToolPlan.read``) and streams of every API read
through the same ``CallReader``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .tools import ToolPlan


@dataclass
class Content:
    text: str


@dataclass
class CallStart:
    index: int
    id: str
    name: str


@dataclass
class CallArgs:
    index: int
    piece: str


@dataclass
class CallDone:
    index: int


Event = Content | CallStart | CallArgs | CallDone

_DECODER = json.JSONDecoder()
_WS = re.compile(r"\s*")
_HEAD = re.compile(
    r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*'
)
_HEAD_START = '{"name":"'


def _loose(literal: str) -> re.Pattern[str]:
    """A marker as a pattern that takes any whitespace where the marker has some, and
    around JSON punctuation (a model left free may write ``{"tool_calls":[``)."""
    out = ""
    for ch in literal:
        if ch.isspace() or ch in "{}[],:":
            if not out.endswith(r"\s*"):
                out += r"\s*"
            if not ch.isspace():
                out += re.escape(ch) + r"\s*"
        else:
            out += re.escape(ch)
    return re.compile(out)


def _may_start(text: str, literal: str) -> bool:
    """May ``text`` (spaces aside) still grow into ``literal``?"""
    a, b = "".join(text.split()), "".join(literal.split())
    return b.startswith(a)


class CallReader:
    """Reads a reply in the plan's call syntax as it is written (``push`` each new piece):
    text outside the calls goes out as content, except a tail that could still begin a
    call marker; a call is announced once its name is known, and its arguments go out as
    the model writes them (raw substrings: they add up to exactly the final
    ``arguments``). ``calls`` holds them so far, in OpenAI's shape. A reply that leaves
    the syntax inside a call is ``broken``: read as plain text at the end."""

    def __init__(self, plan: ToolPlan) -> None:
        syn = plan.syntax
        self.syn = syn
        self.names = {t.function.name for t in plan.offered()}
        self.new_id = plan.template.call_id
        self.most = plan.max_calls
        self.trigger = syn.open + syn.begin
        self.trigger_re = _loose(self.trigger) if self.trigger else None
        self.next = syn.end + syn.separator + syn.begin  # between two calls
        self.next_re = _loose(self.next) if self.next else None
        self.close_re = _loose(syn.end + syn.close)
        self.pos = 0
        self.mark = 0  # where the first call's marker starts
        self.phase = "text"  # text -> call -> args -> tail -> call ... -> after | plain | extra
        self.sent = 0
        self.args_from = 0
        self.broken = False
        self.text = ""  # the reply so far
        self.calls: list[dict[str, Any]] = []

    @property
    def started(self) -> bool:
        return self.sent > 0

    def finish(self, reason: str | None) -> str | None:
        """A stream's finish reason: ``tool_calls`` when its calls were read whole."""
        return "tool_calls" if self.started and not self.broken and reason == "stop" else reason

    def push(self, piece: str, final: bool = False) -> list[Event]:
        """The events of the reply's next ``piece`` (``final``: the reply is over)."""
        self.text += piece
        text = self.text
        out: list[Event] = []
        while True:
            before = (self.phase, self.pos)
            getattr(self, f"_{self.phase}")(text, final, out)
            if (self.phase, self.pos) == before:
                break
        if final and self.phase in ("call", "args", "tail"):
            self.broken = True
        return out

    def _content(self, text: str, upto: int, out: list[Event]) -> None:
        if upto > self.pos:
            out.append(Content(text[self.pos : upto]))
            self.pos = upto

    def _text(self, text: str, final: bool, out: list[Event]) -> None:
        if self.trigger_re is None:  # a call is a bare object opening the reply
            rest = text[self.pos :]
            if not rest.strip():
                if final:
                    self._content(text, len(text), out)
                return
            start = len(text) - len(rest.lstrip())
            if text[start] == "{" and self.sent < self.most:
                self.mark, self.pos, self.phase = self.pos, start, "call"
            else:
                self.phase = "plain"
            return
        m = self.trigger_re.search(text, self.pos) if self.sent < self.most else None
        if m is not None:
            self._content(text, m.start(), out)
            self.mark, self.pos, self.phase = m.start(), m.end(), "call"
            return
        upto = len(text)
        if not final:  # hold back what could still become the marker
            for k in range(max(self.pos, len(text) - len(self.trigger) - 8), len(text)):
                if _may_start(text[k:], self.trigger) and text[k:].strip():
                    upto = k
                    break
        self._content(text, upto, out)

    def _plain(self, text: str, final: bool, out: list[Event]) -> None:
        self._content(text, len(text), out)

    _after = _plain

    def _extra(self, text: str, final: bool, out: list[Event]) -> None:
        self.pos = len(text)

    def _call(self, text: str, final: bool, out: list[Event]) -> None:
        m = _HEAD.match(text, self.pos)
        if m is None:
            squeezed = "".join(text[self.pos :].split())
            waiting = _HEAD_START.startswith(squeezed) or squeezed.startswith(_HEAD_START)
            if final or not waiting:
                self._lose(text, out)
            return
        try:
            name = orjson.loads(f'"{m.group(1)}"')
        except orjson.JSONDecodeError:
            name = None
        if name not in self.names:
            self._lose(text, out)
            return
        start = CallStart(self.sent, self.new_id(), name)
        out.append(start)
        self.calls.append({"id": start.id, "type": "function",
                           "function": {"name": name, "arguments": ""}})  # fmt: skip
        self.sent += 1
        self.pos = self.args_from = _WS.match(text, m.end()).end()
        self.phase = "args"

    def _args(self, text: str, final: bool, out: list[Event]) -> None:
        if self.args_from == self.pos:  # nothing sent yet: the value starts past spaces
            self.pos = self.args_from = _WS.match(text, self.pos).end()
        if self.pos == len(text):
            return
        try:
            _, end = _DECODER.raw_decode(text, self.pos)
        except ValueError:
            end = None
        upto = len(text) if end is None else end
        if upto > self.args_from:
            piece = text[self.args_from : upto]
            out.append(CallArgs(self.sent - 1, piece))
            self.calls[-1]["function"]["arguments"] += piece
            self.args_from = upto
        if end is not None:
            self.pos, self.phase = end, "tail"

    def _tail(self, text: str, final: bool, out: list[Event]) -> None:
        """After the arguments: other keys (Mistral's ``id``), the object's ``}``, then
        the next call or the end of the calls."""
        pos = _WS.match(text, self.pos).end()
        while pos < len(text) and text[pos] == ",":
            try:
                pos = _WS.match(text, pos + 1).end()
                _, pos = _DECODER.raw_decode(text, pos)  # the key
                pos = _WS.match(text, pos).end()
                if text[pos] != ":":
                    return self._lose(text, out)
                _, pos = _DECODER.raw_decode(text, _WS.match(text, pos + 1).end())
                pos = _WS.match(text, pos).end()
            except (ValueError, IndexError):
                return None  # not written yet
        if pos >= len(text):
            return None
        if text[pos] != "}":
            return self._lose(text, out)
        pos += 1
        m = self.next_re.match(text, pos) if self.next_re is not None else None
        if m is not None and (m.end() < len(text) or final):
            out.append(CallDone(self.sent - 1))
            # Calls beyond the most allowed (the grammar writes none) are left unread.
            self.pos, self.phase = m.end(), "call" if self.sent < self.most else "extra"
            return None
        m = self.close_re.match(text, pos)
        if m is not None:
            if not final and self.next_re is not None and _may_start(text[pos:], self.next):
                return None  # may still be the next call's marker
            out.append(CallDone(self.sent - 1))
            self.pos, self.phase = m.end(), "after"
            return None
        if final:
            self._lose(text, out)
        return None

    def _lose(self, text: str, out: list[Event]) -> None:
        """Not the syntax after all: before any call, the text is content."""
        if self.sent:  # a call already announced cannot be taken back: drop the rest
            self.broken = True
            self.pos, self.phase = len(text), "extra"
            return
        self.pos, self.phase = self.mark, "plain"
