"""Tool calling for models whose chat template knows nothing of tools (SmolLM2's, Gemma's):
the generic format.

The tools are described to the model in a system instruction, with the one reply shape
it may use to call them: a JSON object ``{"tool_calls": [{"name": ..., "parameters":
{...}}]}`` (Llama 3's words; the grammar writes keys sorted, so the name comes first and
a stream can announce a call before its arguments). Earlier calls and their results are written into the conversation in the same
words. ``tool_choice`` is enforced by constraining generation to that shape with each
tool's own parameter schema (``required``: at least one call; a named function: exactly
one call of it); ``auto`` lets the model choose, and a reply that is such an object is
read as calls; ``none`` shows no tools and reads no calls.

Templates with their own tool syntax (Hermes/Qwen, Llama 3.x, Mistral) are not yet used
natively: every model gets this format.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidParameter

_CONFIG = ConfigDict(extra="ignore", strict=True)


class FunctionSpec(BaseModel):
    model_config = _CONFIG

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(BaseModel):
    model_config = _CONFIG

    type: Literal["function"]
    function: FunctionSpec


class _Name(BaseModel):
    model_config = _CONFIG
    name: str


class NamedToolChoice(BaseModel):
    model_config = _CONFIG

    type: Literal["function"]
    function: _Name


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(BaseModel):
    model_config = _CONFIG

    name: str
    arguments: str  # JSON text, as OpenAI sends it back


class ToolCallIn(BaseModel):
    """A call in the conversation's history (an assistant message's ``tool_calls``)."""

    model_config = _CONFIG

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


@dataclass
class ToolPlan:
    """What a request's tools do to its prompt, its constraint and its reply."""

    tools: list[ToolSpec]
    choice: ToolChoice
    parallel: bool

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    @property
    def forces_call(self) -> bool:
        """``required`` or a named function: the reply is held to the call shape."""
        return self.active and self.choice != "auto"

    def instruction(self) -> str | None:
        if not self.active:
            return None
        lines = [
            "You can call tools. To call tools, reply with only a JSON object of this form "
            'and nothing else: {"tool_calls": [{"name": "<tool name>", "parameters": '
            "{<the arguments>}}]}"
            + ("" if self.parallel else " with exactly one call")
            + ". To answer without a tool, reply with plain text.",
            "The tools:",
        ]
        for tool in self._offered():
            f = tool.function
            params = orjson.dumps(f.parameters or {"type": "object"}).decode()
            lines.append(f"- {f.name}: {f.description or ''} Arguments (JSON schema): {params}")
        return "\n".join(lines)

    def _offered(self) -> list[ToolSpec]:
        if isinstance(self.choice, NamedToolChoice):
            return [t for t in self.tools if t.function.name == self.choice.function.name]
        return self.tools

    def constraint(self) -> dict[str, Any] | None:
        """The JSON schema a reply must follow, or None (``auto``: the model chooses)."""
        if not self.forces_call:
            return None
        calls = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.function.name},
                    "parameters": t.function.parameters or {"type": "object"},
                },
                "required": ["name", "parameters"],
            }
            for t in self._offered()
        ]
        items = calls[0] if len(calls) == 1 else {"anyOf": calls}
        # At most one call per offered tool when calls may come in parallel: a small
        # model held to the shape would otherwise repeat calls until max_tokens.
        most = len(calls) if self.parallel and not isinstance(self.choice, NamedToolChoice) else 1
        array: dict[str, Any] = {"type": "array", "items": items, "minItems": 1, "maxItems": most}
        return {"type": "object", "properties": {"tool_calls": array}, "required": ["tool_calls"]}

    def calls(self, text: str, finish: str | None) -> list[dict[str, Any]] | None:
        """The reply's tool calls in OpenAI's shape, or None when it is plain text, or was
        cut off by max_tokens (``finish`` "length"): never a broken call."""
        if not self.active or finish == "length":
            return None
        body = text.strip()
        if not body.startswith("{"):
            return None
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        raw = obj.get("tool_calls") if isinstance(obj, dict) else None
        names = {t.function.name for t in self._offered()}
        if not isinstance(raw, list) or not raw:
            return None
        written = _raw_arguments(body)
        out = []
        for k, call in enumerate(raw if self.parallel else raw[:1]):
            if not isinstance(call, dict) or call.get("name") not in names:
                return None
            args = call.get("parameters", call.get("arguments", {}))
            if not isinstance(args, dict):
                return None
            # The arguments as the model wrote them, not re-serialised.
            text = written[k] if written else orjson.dumps(args).decode()
            out.append(
                {
                    "id": f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": text},
                }
            )
        return out

    def could_be_call(self, text: str) -> bool:
        """While streaming: may this start of a reply still turn out to be a call?"""
        return self.active and (not text.strip() or text.lstrip().startswith("{"))


_DECODER = json.JSONDecoder()


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _raw_arguments(body: str) -> list[str] | None:
    """Each call's ``arguments`` exactly as written in a reply already known to be valid
    JSON of the call shape; None if its layout is not the expected one."""
    try:
        pos = _skip(body, 0)
        if body[pos] != "{":
            return None
        key, pos = _DECODER.raw_decode(body, _skip(body, pos + 1))
        pos = _skip(body, pos)
        if key != "tool_calls" or body[pos] != ":":
            return None
        pos = _skip(body, pos + 1)
        if body[pos] != "[":
            return None
        pos += 1
        out: list[str] = []
        while True:
            pos = _skip(body, pos)
            if body[pos] == "]":
                return out
            if body[pos] == ",":
                pos += 1
                continue
            if body[pos] != "{":
                return None
            pos += 1
            raw = "{}"
            while True:
                pos = _skip(body, pos)
                if body[pos] == "}":
                    pos += 1
                    break
                if body[pos] == ",":
                    pos += 1
                    continue
                name, pos = _DECODER.raw_decode(body, pos)
                pos = _skip(body, pos)
                pos = _skip(body, pos + 1)  # the ':'
                start = pos
                _, pos = _DECODER.raw_decode(body, pos)
                if name in ("parameters", "arguments"):
                    raw = body[start:pos]
            out.append(raw)
    except (IndexError, ValueError):
        return None


_CALLS_OPEN = re.compile(r'\s*\{\s*"tool_calls"\s*:\s*\[\s*')
_CALL_HEAD = re.compile(
    r'\s*,?\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:parameters|arguments)"\s*:\s*'
)
_CALL_TAIL = re.compile(r"\s*\}")


class CallStream:
    """Reads a streamed reply of the call shape as it is written, so a call is announced
    as soon as its name is known and its arguments go out as the model writes them (raw
    substrings: they add up to exactly the final ``arguments``). Anything else, and any
    layout it cannot follow, is left to the whole-reply reading at the end."""

    def __init__(self, plan: ToolPlan) -> None:
        self.names = {t.function.name for t in plan._offered()}
        self.most = None if plan.parallel else 1
        self.pos = 0
        self.phase = "open"  # open -> head -> args -> head ... | lost
        self.sent = 0  # calls announced
        self.args_from = 0  # where the current call's arguments start / were sent up to

    @property
    def started(self) -> bool:
        return self.sent > 0

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Tool-call deltas for what ``text`` (the whole reply so far) adds."""
        out: list[dict[str, Any]] = []
        while self.phase != "lost":
            if self.phase == "open":
                m = _CALLS_OPEN.match(text, self.pos)
                if m is None or m.end() == len(text):
                    if not _could_open(text[self.pos :]):
                        self.phase = "lost"
                    break
                self.pos, self.phase = m.end(), "head"
            elif self.phase == "head":
                if self.most is not None and self.sent >= self.most:
                    break
                m = _CALL_HEAD.match(text, self.pos)
                if m is None:
                    break  # not yet there (or the list ends): the end decides
                name = orjson.loads(f'"{m.group(1)}"')
                if name not in self.names:
                    self.phase = "lost"
                    break
                out.append({"index": self.sent, "id": f"call_{uuid.uuid4().hex[:24]}",
                            "type": "function", "function": {"name": name, "arguments": ""}})  # fmt: skip
                self.sent += 1
                self.pos = self.args_from = m.end()
                self.phase = "args"
            else:  # args: everything before the object closes belongs to it
                if self.args_from == self.pos:  # nothing sent yet: start at the value
                    self.pos = self.args_from = _skip(text, self.pos)
                    if self.pos == len(text):
                        break
                try:
                    _, end = _DECODER.raw_decode(text, self.pos)
                except ValueError:
                    end = None
                upto = len(text) if end is None else end
                if upto > self.args_from:
                    piece = text[self.args_from : upto]
                    out.append({"index": self.sent - 1, "function": {"arguments": piece}})
                    self.args_from = upto
                if end is None:
                    break
                tail = _CALL_TAIL.match(text, end)
                if tail is None:
                    break
                self.pos, self.phase = tail.end(), "head"
        return out


def _could_open(text: str) -> bool:
    """May ``text`` still grow into the opening ``{"tool_calls": [``?"""
    squeezed = "".join(text.split())
    return '{"tool_calls":['.startswith(squeezed) or squeezed.startswith('{"tool_calls":[')


def plan_tools(
    tools: list[ToolSpec] | None,
    choice: ToolChoice | None,
    parallel: bool | None,
    output_format: str | None,
) -> ToolPlan:
    """Check the request's tools and choice; errors name what cannot be honoured.
    ``output_format``: the request field that already constrains the output, if any."""
    tools = tools or []
    if choice is None:
        choice = "auto" if tools else "none"
    if not tools and choice != "none" and choice != "auto":
        raise InvalidParameter(
            "tool_choice needs tools: there is no tool to call", param="tool_choice"
        )
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidParameter("tools: two tools have the same name", param="tools")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidParameter(
            f"tool_choice names {choice.function.name!r}, which is not in tools "
            f"({', '.join(names)})",
            param="tool_choice",
        )
    for i, tool in enumerate(tools):
        params = tool.function.parameters
        if params is None:
            continue
        try:
            validator_for(params).check_schema(params)
        except SchemaError as exc:
            raise InvalidParameter(
                f"tools[{i}] ({tool.function.name}): the parameters are not a valid JSON "
                f"schema: {exc.message}",
                param=f"tools[{i}].function.parameters",
            ) from None
        if params.get("type", "object") != "object":
            raise InvalidParameter(
                f"tools[{i}] ({tool.function.name}): parameters must be an object schema",
                param=f"tools[{i}].function.parameters",
            )
    plan = ToolPlan(tools, choice, parallel is not False)
    if plan.forces_call and output_format is not None:
        raise InvalidParameter(
            f"{output_format} cannot be combined with a tool_choice that forces a call",
            param=output_format,
        )
    return plan


def with_instruction(
    messages: list[dict[str, Any]], instruction: str | None
) -> list[dict[str, Any]]:
    """The tools' instruction, in the system message (made if there is none)."""
    if instruction is None:
        return messages
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{instruction}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


def ollama_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-shaped calls in Ollama's: ``arguments`` an object, with ``index``."""
    return [
        {
            "id": c["id"],
            "function": {
                "index": k,
                "name": c["function"]["name"],
                "arguments": orjson.loads(c["function"]["arguments"]),
            },
        }
        for k, c in enumerate(calls)
    ]


def history_message(role: str, content: str, calls: list[ToolCallIn] | None, call_id: str | None,
                    name: str | None, index: int, need_id: bool = True) -> dict[str, Any]:  # fmt: skip
    """One message of the conversation as the generic format writes it for the model.
    A tool result names its call (``call_id``; required unless ``need_id`` is off, as on
    the Ollama API, whose results name only their tool)."""
    if role == "tool":
        if not call_id and need_id:
            raise InvalidParameter(
                f"messages[{index}]: a tool message needs tool_call_id",
                param=f"messages[{index}].tool_call_id",
            )
        which = f" {call_id}" if call_id else ""
        who = f" ({name})" if name else ""
        return {"role": "user", "content": f"Result of tool call{which}{who}: {content}"}
    if calls:
        parsed = []
        for k, call in enumerate(calls):
            try:
                args = orjson.loads(call.function.arguments or "{}")
            except orjson.JSONDecodeError:
                raise InvalidParameter(
                    f"messages[{index}].tool_calls[{k}].function.arguments is not valid JSON",
                    param=f"messages[{index}].tool_calls[{k}].function.arguments",
                ) from None
            parsed.append({"name": call.function.name, "parameters": args})
        text = orjson.dumps({"tool_calls": parsed}).decode()
        return {"role": "assistant", "content": (content + "\n" + text) if content else text}
    return {"role": role, "content": content}
