"""Tool calling: the tools into the prompt, the constraint that enforces ``tool_choice``,
and the calls out of the reply, in the chat template's own syntax.

What a template knows of tools is found by probing it (api/toolsyntax.py). A template
that writes tools and calls itself (Hermes/Qwen's ``<tool_call>``, Llama 3's bare JSON,
Mistral's ``[TOOL_CALLS][...]``) gets the tools as its ``tools`` variable and the
conversation's calls and results as it expects them; its syntax is read off the
template, so the constraint and the reader follow what the model was trained on.

Any other template (SmolLM2's, Gemma's) gets the generic format: the tools described in a
system instruction, with one reply shape to call them, a JSON object ``{"tool_calls":
[{"name": ..., "parameters": {...}}]}`` (Llama 3's words; the name comes first, so a
stream can announce a call before its arguments); earlier calls and their results are
written into the conversation in the same words.

``tool_choice`` is enforced by the constraint (engine/constraint.py): ``required`` and a
named function hold the reply to the syntax from its first token; ``auto`` leaves it free
until the syntax's trigger is written, and then holds the calls to it and to each tool's
schema (a lazy grammar); ``none`` shows no tools and reads no calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson
from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field

from ..engine.protocol import CallSyntax, ToolGrammar
from ..errors import InvalidParameter
from .callreader import CallReader, Content
from .toolsyntax import GENERIC_TEMPLATE, TemplateTools, probe

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
    template: TemplateTools = GENERIC_TEMPLATE

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    @property
    def native(self) -> bool:
        """The template writes the tools and calls itself."""
        return self.template.native

    @property
    def syntax(self) -> CallSyntax:
        return self.template.syntax

    @property
    def forces_call(self) -> bool:
        """``required`` or a named function: the reply is held to the call shape."""
        return self.active and self.choice != "auto"

    @property
    def max_calls(self) -> int:
        """At most one call per offered tool when calls may come in parallel (a small
        model held to the shape would otherwise repeat calls until max_tokens), and one
        when the template cannot write two."""
        named = isinstance(self.choice, NamedToolChoice)
        if not self.parallel or named or (self.native and not self.template.parallel):
            return 1
        return max(1, min(len(self.offered()), 8))

    def tools_for_template(self) -> list[dict[str, Any]] | None:
        """The ``tools`` variable of a native template (the offered tools)."""
        if not (self.active and self.native):
            return None
        return [t.model_dump(exclude_none=True) for t in self.offered()]

    def instruction(self) -> str | None:
        """The generic format's system instruction (None for a native template)."""
        if not self.active or self.native:
            return None
        lines = [
            "You can call tools. To call tools, reply with only a JSON object of this form "
            'and nothing else: {"tool_calls": [{"name": "<tool name>", "parameters": '
            "{<the arguments>}}]}"
            + ("" if self.max_calls > 1 else " with exactly one call")
            + ". To answer without a tool, reply with plain text.",
            "The tools:",
        ]
        for tool in self.offered():
            f = tool.function
            params = orjson.dumps(f.parameters or {"type": "object"}).decode()
            lines.append(f"- {f.name}: {f.description or ''} Arguments (JSON schema): {params}")
        return "\n".join(lines)

    def with_instruction(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The conversation with the generic format's instruction, where the template
        takes it (a system message, or the first user message for templates without a
        system role)."""
        return with_instruction(messages, self.instruction(), self.template.system)

    def offered(self) -> list[ToolSpec]:
        """The tools the model may call: the one ``tool_choice`` names, else all."""
        if isinstance(self.choice, NamedToolChoice):
            return [t for t in self.tools if t.function.name == self.choice.function.name]
        return self.tools

    def constraint(self) -> ToolGrammar | None:
        """The grammar of the reply: the calls in the template's syntax, each call object
        ``{"name": <const>, <args key>: <the tool's parameters>}`` (the name first)."""
        if not self.active:
            return None
        key = self.syntax.args_key
        calls, defs = [], {}
        for i, t in enumerate(self.offered()):
            params, own = _rooted(t.function.parameters or {"type": "object"}, f"t{i}_")
            defs.update(own)
            calls.append(
                {
                    "type": "object",
                    "properties": {"name": {"const": t.function.name}, key: params},
                    "required": ["name", key],
                }
            )
        return ToolGrammar(self.syntax, calls, self.forces_call, self.max_calls, defs)

    def read(self, text: str, finish: str | None) -> Reply:
        """A whole reply: the text outside the calls, and the calls in OpenAI's shape
        (none when the reply was cut off by max_tokens in a call, or is not of the
        syntax: never a broken call)."""
        if not self.active:
            return Reply(text, [])
        reader = CallReader(self)
        events = reader.push(text, final=True)
        if reader.broken or (finish == "length" and reader.sent):
            return Reply(text, [])
        content = "".join(e.text for e in events if isinstance(e, Content))
        return Reply(content.strip() if reader.calls else content, reader.calls)


def _rooted(schema: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A tool's parameter schema made to work inside the call object's schema: its
    ``$defs`` / ``definitions`` move to the root under ``prefix``-ed names, and its refs
    (``#/$defs/X``, ``#/definitions/X``, and ``#`` for itself) are rewritten to match."""
    own = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    if not own and '"$ref"' not in orjson.dumps(schema).decode():
        return schema, {}
    body = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
    defs = {f"{prefix}{name}": value for name, value in own.items()}
    defs[f"{prefix}root"] = body

    def fix(node: Any) -> Any:
        if isinstance(node, list):
            return [fix(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: fix(v) for k, v in node.items()}
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref == "#":
                out["$ref"] = f"#/$defs/{prefix}root"
            for base in ("#/$defs/", "#/definitions/"):
                if ref.startswith(base):
                    out["$ref"] = f"#/$defs/{prefix}{ref[len(base) :]}"
        return out

    defs = {name: fix(value) for name, value in defs.items()}
    return {"$ref": f"#/$defs/{prefix}root"}, defs


@dataclass
class Reply:
    content: str
    calls: list[dict[str, Any]]

    def finish(self, reason: str | None) -> str | None:
        """The reply's finish reason: ``tool_calls`` when it holds calls."""
        return "tool_calls" if self.calls else reason


async def plan_chat_tools(
    tools: list[ToolSpec] | None,
    choice: ToolChoice | None,
    parallel: bool | None,
    output_format: str | None,
    chat_template: str | TemplateTools | None,
) -> ToolPlan:
    """plan_tools for a chat rendered by ``chat_template``: its source (probed once, off
    the event loop: toolsyntax.probe), or a remote engine's TemplateTools."""
    template = GENERIC_TEMPLATE
    if tools:
        template = (
            chat_template
            if isinstance(chat_template, TemplateTools)
            else await probe(chat_template)
        )
    return plan_tools(tools, choice, parallel, output_format, template)


def plan_tools(
    tools: list[ToolSpec] | None,
    choice: ToolChoice | None,
    parallel: bool | None,
    output_format: str | None,
    chat_template: TemplateTools | None = None,
) -> ToolPlan:
    """Check the request's tools and choice; errors name what cannot be honoured.
    ``output_format``: the request field that already constrains the output, if any;
    ``chat_template``: what the template that renders the chat knows of tools
    (plan_chat_tools probes it; None: nothing, the generic format)."""
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
    template = chat_template if tools and chat_template is not None else GENERIC_TEMPLATE
    plan = ToolPlan(tools, choice, parallel is not False, template)
    if plan.forces_call and output_format is not None:
        raise InvalidParameter(
            f"{output_format} cannot be combined with a tool_choice that forces a call",
            param=output_format,
        )
    return plan


def with_instruction(
    messages: list[dict[str, Any]], instruction: str | None, system_role: bool = True
) -> list[dict[str, Any]]:
    """The tools' instruction, in the system message (made if there is none); for a
    template without a system role, ahead of the first user message's text."""
    if instruction is None:
        return messages
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{instruction}"}
        return [first, *messages[1:]]
    if not system_role:
        for i, m in enumerate(messages):
            if m["role"] == "user":
                first = {**m, "content": f"{instruction}\n\n{m['content']}"}
                return [*messages[:i], first, *messages[i + 1 :]]
    return [{"role": "system", "content": instruction}, *messages]


def ollama_call(call: dict[str, Any], index: int) -> dict[str, Any]:
    """An OpenAI-shaped call in Ollama's: ``arguments`` an object, with ``index``."""
    fn = call["function"]
    return {
        "id": call["id"],
        "function": {
            "index": index,
            "name": fn["name"],
            "arguments": orjson.loads(fn["arguments"]),
        },
    }


def ollama_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [ollama_call(c, k) for k, c in enumerate(calls)]


def history_message(role: str, content: str, calls: list[ToolCallIn] | None, call_id: str | None,
                    name: str | None, index: int, need_id: bool = True,
                    native: bool = False) -> dict[str, Any]:  # fmt: skip
    """One message of the conversation as the template gets it: for a ``native``
    template, calls with their arguments as objects (what tool-aware templates expect)
    and results as ``tool`` messages; for the others, in the generic format's words. A
    tool result names its call (``call_id``; required unless ``need_id`` is off, as on
    the Ollama API, whose results name only their tool)."""
    if role == "tool":
        if not call_id and need_id:
            raise InvalidParameter(
                f"messages[{index}]: a tool message needs tool_call_id",
                param=f"messages[{index}].tool_call_id",
            )
        if native:
            return {"role": "tool", "content": content, "tool_call_id": call_id, "name": name}
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
            parsed.append((call, args))
        if native:
            return {
                "role": "assistant",
                "content": content,
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.function.name, "arguments": args},
                    }  # fmt: skip
                    for c, args in parsed
                ],
            }
        text = orjson.dumps(
            {"tool_calls": [{"name": c.function.name, "parameters": a} for c, a in parsed]}
        ).decode()
        return {"role": "assistant", "content": (content + "\n" + text) if content else text}
    return {"role": role, "content": content}
