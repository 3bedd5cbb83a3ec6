"""Anthropic Messages API request bodies (``POST /v1/messages`` and its
``count_tokens``), and their conversion to the chat request every API runs on: blocks to
messages, ``tool_use`` / ``tool_result`` to calls and results, ``tool_choice`` to the
OpenAI forms. A field Mullama does not implement is refused by name."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import Field, ValidationError

from ...engine import limits
from ...errors import InvalidParameter
from ..body import validate
from ..fields import Refusing, StrictBody
from ..openai.schemas import ChatCompletionRequest

_Strict = StrictBody


class TextBlock(_Strict):
    type: Literal["text"]
    text: str


class ToolUseBlock(_Strict):
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


class ToolResultBlock(_Strict):
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


class OtherBlock(_Strict):
    """Blocks Mullama cannot take yet: refused by name."""

    type: Literal[
        "image", "document", "search_result", "thinking", "redacted_thinking",
        "server_tool_use", "web_search_tool_result", "container_upload",
    ]  # fmt: skip


Block = Annotated[
    TextBlock | ToolUseBlock | ToolResultBlock | OtherBlock, Field(discriminator="type")
]


class Message(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(_Strict, Refusing):
    REFUSE_UNKNOWN = False  # cache_control and the like change nothing here
    WHERE = "tools[]."
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Thinking(_Strict):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class MessagesRequest(_Strict, Refusing):
    REFUSED: ClassVar[dict[str, str]] = {
        "mcp_servers": "MCP connectors are not implemented",
        "container": "code execution containers are not implemented",
        "context_management": "context management is not implemented",
    }
    IGNORED = frozenset({"metadata", "service_tier", "anthropic_version"})

    model: str
    max_tokens: int = Field(ge=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=limits.MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    stop_sequences: limits.Stops | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    # Accepted: a model without a reasoning mode just answers.
    thinking: Thinking | None = None
    fallback: bool = True  # extension: False keeps the request on its model (--fallback)

    def to_chat(self) -> ChatCompletionRequest:
        """The chat request this is, checked as any chat request is."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self._messages(),
            "max_tokens": self.max_tokens,
            "stream": self.stream,
        }
        for name in ("temperature", "top_p", "top_k"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        if self.stop_sequences:
            body["stop"] = self.stop_sequences
        if self.tools:
            body["tools"] = [_tool(i, t) for i, t in enumerate(self.tools)]
        choice = self.tool_choice
        if choice is not None:
            if choice.type == "tool" and not choice.name:
                raise InvalidParameter("tool_choice of type tool needs a name", param="tool_choice")
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


def _tool(index: int, raw: dict[str, Any]) -> dict[str, Any]:
    kind = raw.get("type")
    if kind not in (None, "custom"):
        raise InvalidParameter(
            f"tools[{index}] is a server tool ({kind}), which Mullama does not have; "
            "only custom tools (name, description, input_schema) are served",
            param=f"tools[{index}].type",
        )
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


def _message(index: int, m: Message) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: tool results become ``tool`` messages
    (ahead of the user's own text, as they answer the previous turn's calls), tool uses
    become the assistant's ``tool_calls``."""
    if isinstance(m.content, str):
        return [{"role": m.role, "content": m.content}]
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for k, block in enumerate(m.content):
        if isinstance(block, OtherBlock):
            raise _refused_block(f"messages[{index}].content[{k}]", block.type)
        if isinstance(block, TextBlock):
            text.append(block.text)
        elif isinstance(block, ToolUseBlock):
            if m.role != "assistant":
                raise InvalidParameter(
                    f"messages[{index}]: tool_use blocks belong in assistant messages",
                    param=f"messages[{index}].content[{k}]",
                )
            calls.append(
                {"id": block.id, "type": "function",
                 "function": {"name": block.name, "arguments": orjson.dumps(block.input).decode()}}
            )  # fmt: skip
        else:
            if m.role != "user":
                raise InvalidParameter(
                    f"messages[{index}]: tool_result blocks belong in user messages",
                    param=f"messages[{index}].content[{k}]",
                )
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": block.tool_use_id,
                    "content": block.text(f"messages[{index}].content[{k}]"),
                }
            )
    out = list(results)
    if m.role == "assistant":
        msg: dict[str, Any] = {"role": "assistant", "content": "\n".join(text)}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    elif text or not results:
        out.append({"role": "user", "content": "\n".join(text)})
    return out


class CountTokensRequest(MessagesRequest):
    """``count_tokens``: the same body less what only generation needs."""

    max_tokens: int = Field(default=1, ge=1)
