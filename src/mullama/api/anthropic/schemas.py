"""Anthropic Messages API request bodies (``POST /v1/messages`` and its
``count_tokens``), and their conversion to the chat request every API runs on: blocks to
messages, ``tool_use`` / ``tool_result`` to calls and results, ``tool_choice`` to the
OpenAI forms, ``output_config.format`` to ``response_format``.

What Claude Code sends (tests/data/agents/claude_first_request.json) is taken: a
``system`` message in the middle of ``messages`` (the chat template renders it where it
can, engine/turns.py), ``cache_control`` on any block (prefix reuse is always on),
``context_management``, ``metadata``; these are reported as ignored (api/fields.py).
``thinking`` and ``output_config.effort`` ask for the model's thinking (``think``); for a
model whose template has no thinking format they are reported as ignored (it just
answers). Earlier turns' thinking blocks sent back go to the template as the turn's
``reasoning_content``. Server tools (``web_search_20250305``, ``bash_20250124``...) are left out
of what the model sees unless ``tool_choice`` forces one (a 400). A field that would
change the answer and that Mullama cannot honour is refused by name."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import Field, ValidationError, create_model

from ...engine import knobs, limits
from ...errors import InvalidParameter
from .. import fields
from ..body import validate
from ..fields import Refusing, StrictBody
from ..openai.schemas import ChatCompletionRequest
from ..thinking import Think

_Strict = StrictBody
# Accepted on every block and tool: prompt caching is prefix reuse, always on; citations
# on text a client sends back are a record of where it came from.
_BLOCK_NO_OPS = frozenset({"cache_control", "citations"})


class _Block(_Strict, Refusing):
    REFUSE_UNKNOWN = False  # blocks sent back carry what the API wrote on them
    IGNORED = _BLOCK_NO_OPS
    WHERE = "messages[].content[]."


class TextBlock(_Block):
    type: Literal["text"]
    text: str


class SystemBlock(TextBlock):
    WHERE = "system[]."


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


def _refused_block(where: str, kind: str) -> InvalidParameter:
    return InvalidParameter(
        f"{where} is a block of type {kind}, which Mullama does not take (text models only)",
        param=f"{where}.type",
    )


class _ResultMedia(_Strict):
    type: Literal["image", "document", "search_result"]


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlock | _ResultMedia, Field(discriminator="type")]] = ""
    is_error: bool = False

    def text(self, where: str) -> str:
        if isinstance(self.content, str):
            body = self.content
        else:
            for j, b in enumerate(self.content):
                if isinstance(b, _ResultMedia):
                    raise _refused_block(f"{where}.content[{j}]", b.type)
            body = "\n".join(b.text for b in self.content if isinstance(b, TextBlock))
        return f"Error: {body}" if self.is_error else body


class ThinkingBlock(_Strict):
    """An earlier assistant turn's thinking, sent back: that turn's ``reasoning_content``,
    which the chat template keeps or drops as its model was trained to see it. Its
    signature is not checked (Mullama's own are opaque, and nothing is hidden in them)."""

    type: Literal["thinking"]
    thinking: str = ""
    signature: str | None = None


class RedactedThinkingBlock(_Strict):
    """Thinking that Anthropic encrypted: nothing a model here can read; dropped and
    reported."""

    type: Literal["redacted_thinking"]


class OtherBlock(_Strict):
    """Blocks Mullama cannot take yet: refused by name."""

    type: Literal[
        "image", "document", "search_result", "server_tool_use", "web_search_tool_result",
        "container_upload",
    ]  # fmt: skip


Block = Annotated[
    TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock | OtherBlock,
    Field(discriminator="type"),
]


class Message(_Strict, Refusing):
    REFUSE_UNKNOWN = False  # Claude Code's system turns carry their own output_config
    WHERE = "messages[]."
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class Tool(_Strict, Refusing):
    REFUSE_UNKNOWN = False  # tools carry settings that change nothing here
    WHERE = "tools[]."
    # Every tool is shown (no deferred loading), held to its schema when called.
    IGNORED = frozenset(
        {"cache_control", "defer_loading", "eager_input_streaming", "strict",
         "input_examples", "allowed_callers"}
    )  # fmt: skip
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Thinking(_Strict):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = Field(default=None, ge=0)


class OutputFormat(_Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


# output_config.effort as the model's thinking takes it (api/thinking.py's words).
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "max": "xhigh"}
_NO_EFFORT = "effort is not implemented (the model has no reasoning mode)"


class OutputConfig(_Strict, Refusing):
    WHERE = "output_config."
    format: OutputFormat | None = None
    effort: str | None = None


# The sampling knobs as Anthropic names them, with its bounds (engine/knobs.py).
_Knobs = create_model("_Knobs", __base__=_Strict, **knobs.fields("anthropic"))  # type: ignore[call-overload]


class MessagesRequest(_Knobs, Refusing):  # type: ignore[valid-type,misc]
    REFUSED: ClassVar[dict[str, str]] = {
        "mcp_servers": "MCP connectors are not implemented",
        "container": "code execution containers are not implemented",
    }
    HINTS: ClassVar[dict[str, str]] = {
        "context_management": "context management (clearing old tool results or "
        "thinking) is not implemented",
    }
    # Changes nothing here: prompt caching is prefix reuse, always on; no tiers, regions
    # or speeds.
    IGNORED = frozenset(
        {"metadata", "service_tier", "anthropic_version", "cache_control", "speed",
         "inference_geo"}
    )  # fmt: skip

    model: str
    max_tokens: int = Field(ge=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[SystemBlock] | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=limits.MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    stop_sequences: limits.Stops | None = None
    stream: bool = False
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    # The structured-outputs beta's name of output_config.format.
    output_format: OutputFormat | None = None
    fallback: bool = True  # extension: False keeps the request on its model (--fallback)

    def think(self) -> Think:
        """What the request asks of the model's thinking: ``thinking.type`` (enabled, with
        its ``budget_tokens``; disabled; adaptive: the model's own default) and
        ``output_config.effort``."""
        kind = self.thinking.type if self.thinking is not None else "adaptive"
        on = None if kind == "adaptive" else kind != "disabled"
        budget = self.thinking.budget_tokens if self.thinking is not None and on else None
        effort = self.output_config.effort if self.output_config is not None else None
        return Think(on, _EFFORT.get(effort or ""), budget)

    def _report_think(self, thinks: bool) -> None:
        """``thinking`` and ``output_config.effort`` change nothing for a model without a
        thinking format (``thinks`` false), nor an effort Mullama does not know: said so."""
        effort = self.output_config.effort if self.output_config is not None else None
        if effort and (not thinks or effort not in _EFFORT):
            fields.hint("output_config.effort", _NO_EFFORT if not thinks else
                        f"effort {effort!r} is not one of {', '.join(_EFFORT)}")  # fmt: skip
        if not thinks and self.thinking is not None and self.thinking.type != "disabled":
            fields.ignored("thinking")

    def to_chat(self, thinks: bool = False) -> ChatCompletionRequest:
        """The chat request this is, checked as any chat request is. ``thinks``: the model's
        template has a thinking format (else ``thinking`` and the effort are reported as
        ignored)."""
        self._report_think(thinks)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self._messages(),
            "max_tokens": self.max_tokens,
            "stream": self.stream,
        }
        for name, value in knobs.values(self, "anthropic").items():
            body[knobs.BY_NAME[name].names["openai"]] = value
        if self.stop_sequences:
            body["stop"] = self.stop_sequences
        served, left_out = _tools(self.tools or [])
        if served:
            body["tools"] = served
        fmt = self.output_config.format if self.output_config else None
        fmt = fmt or self.output_format
        if fmt is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": fmt.schema_}}  # fmt: skip
        choice = self.tool_choice
        if choice is not None:
            if choice.type == "tool" and not choice.name:
                raise InvalidParameter("tool_choice of type tool needs a name", param="tool_choice")
            _check_forced(choice, served, left_out)
            body["tool_choice"] = {
                "auto": "auto",
                "any": "required",
                "none": "none",
                "tool": {"type": "function", "function": {"name": choice.name}},
            }[choice.type]
            if choice.disable_parallel_tool_use:
                body["parallel_tool_calls"] = False
        return validate(ChatCompletionRequest, body)

    def _messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.system:
            system = (
                self.system
                if isinstance(self.system, str)
                else "\n".join(b.text for b in self.system)
            )
            out.append({"role": "system", "content": system})
        for i, m in enumerate(self.messages):
            out += _message(i, m)
        return out


def _tools(raw: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The custom tools as chat tools, and the tools left out (name -> type): server
    tools and Anthropic-defined ones (web_search_20250305, bash_20250124...), which the
    model would need Anthropic's own definitions of; they are reported as ignored, and
    refused with --strict-fields."""
    served: list[dict[str, Any]] = []
    left_out: dict[str, str] = {}
    for i, tool in enumerate(raw):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in (None, "custom"):
            served.append(_tool(i, tool))
            continue
        if fields.strict():
            raise InvalidParameter(
                f"tools[{i}] is a server tool ({kind}), which Mullama does not have; "
                "only custom tools (name, description, input_schema) are served",
                param=f"tools[{i}].type",
            )
        name = tool.get("name")
        left_out[name if isinstance(name, str) else str(kind)] = str(kind)
        fields.ignored(f"tools[{kind}]", declared=False)
    return served, left_out


def _check_forced(choice: ToolChoice, served: list[dict], left_out: dict[str, str]) -> None:
    """A tool_choice that forces a tool left out is a 400 naming it: the client relies on
    that call."""
    if choice.type == "tool" and choice.name in left_out:
        raise InvalidParameter(
            f"tool_choice forces {choice.name!r}, a {left_out[choice.name]} tool, which "
            "Mullama does not have (only custom tools are served)",
            param="tool_choice",
        )
    if choice.type == "any" and not served and left_out:
        raise InvalidParameter(
            "tool_choice 'any' needs a custom tool; the request's other tools "
            f"({', '.join(left_out.values())}) are not served by Mullama",
            param="tool_choice",
        )


def _tool(index: int, raw: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidParameter(f"tools[{index}] must be an object", param=f"tools[{index}]")
    try:
        tool = Tool.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InvalidParameter(
            f"tools[{index}].{where}: {err['msg']}", param=f"tools[{index}].{where}"
        ) from None
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.input_schema,
        },
    }


def _misplaced(index: int, k: int, what: str) -> InvalidParameter:
    return InvalidParameter(f"messages[{index}]: {what}", param=f"messages[{index}].content[{k}]")


class _Turn:
    """One Anthropic message's blocks read into the chat messages it becomes."""

    def __init__(self, index: int, role: str) -> None:
        self.index, self.role = index, role
        self.text: list[str] = []
        self.thought: list[str] = []  # an assistant turn's thinking
        self.calls: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []

    def add(self, k: int, block: Any) -> None:
        where = f"messages[{self.index}].content[{k}]"
        if isinstance(block, OtherBlock):
            raise _refused_block(where, block.type)
        if isinstance(block, ThinkingBlock) and self.role == "assistant":
            self.thought.append(block.thinking)
        elif isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            fields.ignored(f"messages[].content[{block.type}]")
        elif self.role == "system" and not isinstance(block, TextBlock):
            raise _misplaced(self.index, k, "a system message holds text blocks only")
        elif isinstance(block, TextBlock):
            self.text.append(block.text)
        elif isinstance(block, ToolUseBlock):
            if self.role != "assistant":
                raise _misplaced(self.index, k, "tool_use blocks belong in assistant messages")
            self.calls.append(
                {"id": block.id, "type": "function",
                 "function": {"name": block.name, "arguments": orjson.dumps(block.input).decode()}}
            )  # fmt: skip
        else:
            if self.role != "user":
                raise _misplaced(self.index, k, "tool_result blocks belong in user messages")
            self.results.append(
                {"role": "tool", "tool_call_id": block.tool_use_id, "content": block.text(where)}
            )

    def messages(self) -> list[dict[str, Any]]:
        out = list(self.results)
        text = "\n".join(self.text)
        if self.role == "system":
            out.append({"role": "system", "content": text})
        elif self.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if self.thought:
                msg["reasoning_content"] = "\n".join(self.thought)
            if self.calls:
                msg["tool_calls"] = self.calls
            out.append(msg)
        elif self.text or not self.results:
            out.append({"role": "user", "content": text})
        return out


def _message(index: int, m: Message) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: tool results become ``tool`` messages
    (ahead of the user's own text, as they answer the previous turn's calls), tool uses
    become the assistant's ``tool_calls`` and its thinking blocks its
    ``reasoning_content``; a system message stays one, where it is."""
    if isinstance(m.content, str):
        return [{"role": m.role, "content": m.content}]
    turn = _Turn(index, m.role)
    for k, block in enumerate(m.content):
        turn.add(k, block)
    return turn.messages()


class CountTokensRequest(MessagesRequest):
    """``count_tokens``: the same body less what only generation needs."""

    max_tokens: int = Field(default=1, ge=1)
