"""OpenAI's Responses API (``POST /v1/responses``; ``GET`` and ``DELETE`` of a stored
response): the default model class of the OpenAI Agents SDK and the API of Codex CLI.

A request becomes a chat request (input items to messages, function and namespace tools
to chat tools (responsetools.py), ``text.format`` to ``response_format``) and runs on the
chat path; the reply is written as output items, whole or as the typed event stream. Responses are kept in
memory (bounded in number and age) so that ``previous_response_id`` continues a
conversation: its messages come first, and the engine's prefix reuse keeps their KV.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

from pydantic import Field

from ... import requestctx
from ...engine import limits
from ...errors import InvalidParameter, MullamaError, NotFound
from ...wire.framing import sse
from ..body import validate
from ..callreader import CallArgs, CallDone, CallStart
from ..chat import openai_chat, start_chat
from ..fields import Refusing, StrictBody
from ..replies import Event, Finished, Reasoning, Started, Text, Usage, whole
from .reasoning import item_thought, reasoning_item, reasoning_part
from .responsetools import ResponseTools, flat_name
from .schemas import ChatCompletionRequest, Effort

if TYPE_CHECKING:
    from ...models.manager import ModelManager

_Strict = StrictBody


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Strict, Refusing):
    WHERE = "text."
    # Codex CLI sends it with every request; the model has one way of writing.
    IGNORED = frozenset({"verbosity"})
    format: TextFormat | None = None


class ReasoningConfig(_Strict, Refusing):
    """How much a reasoning model thinks (``effort``: as chat's ``reasoning_effort``)."""

    WHERE = "reasoning."
    # No summary is written: a reasoning item carries the whole thinking as its content.
    # Codex's context (which turns' reasoning the model sees): the template decides that.
    IGNORED = frozenset({"summary", "generate_summary", "context"})
    effort: Effort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(_Strict, Refusing):
    REFUSED: ClassVar[dict[str, str]] = {
        "background": "background responses are not implemented",
        "conversation": "conversation objects are not implemented; use previous_response_id",
        "prompt": "stored prompt templates are not implemented",
        "top_logprobs": "logprobs are not implemented on the Responses API",
    }
    HINTS: ClassVar[dict[str, str]] = {
        "truncation": "truncating the input is not implemented (too long an input is a 400)",
        "context_management": "server-side compaction is not implemented",
    }
    NEUTRAL = {"truncation": ("disabled",), "background": (False,)}
    # Changes nothing for a local server, or for a model without a reasoning mode
    # (client_metadata: Codex's telemetry; max_tool_calls caps hosted tools' calls).
    IGNORED = frozenset(
        {"metadata", "user", "service_tier", "safety_identifier", "prompt_cache_key",
         "include", "stream_options", "prompt_cache_retention",
         "prompt_cache_options", "client_metadata", "max_tool_calls"}
    )  # fmt: skip

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=limits.MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    fallback: bool = True  # extension: False keeps the request on its model (--fallback)
    cache_salt: str | None = Field(default=None, min_length=1, max_length=1024)  # vLLM's

    def to_chat(
        self, conversation: list[dict[str, Any]], tools: ResponseTools | None = None
    ) -> ChatCompletionRequest:
        """The chat request this is, for ``conversation`` (a previous response's messages
        and this request's input, as chat messages) and ``tools`` (this request's, made
        here when not given)."""
        if tools is None:
            tools = ResponseTools.of(self.tools, self.input)
        messages = list(conversation)
        if self.instructions:  # not carried over from a previous response, as OpenAI's
            messages = [{"role": "system", "content": self.instructions}, *messages]
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": self.stream}
        for name in ("temperature", "top_p", "parallel_tool_calls", "cache_salt"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        if self.max_output_tokens is not None:
            body["max_tokens"] = self.max_output_tokens
        if self.reasoning is not None and self.reasoning.effort is not None:
            body["reasoning_effort"] = self.reasoning.effort
        if self.tool_choice is not None:
            body["tool_choice"] = tools.choice(self.tool_choice)
        if tools.chat:
            body["tools"] = tools.chat
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.type != "text":
            spec: dict[str, Any] = {"type": fmt.type}
            if fmt.type == "json_schema":
                if fmt.schema_ is None:
                    raise InvalidParameter(
                        "text.format.schema is required for type json_schema",
                        param="text.format.schema",
                    )
                spec["json_schema"] = {
                    "name": fmt.name,
                    "schema": fmt.schema_,
                    "strict": fmt.strict,
                }
            body["response_format"] = spec
        return validate(ChatCompletionRequest, body)


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as chat messages: messages (text parts), function calls (joined into
    the assistant turn that makes them; a namespaced one by the name its tool has in the
    chat request) and their outputs (``tool`` messages). A reasoning item's text is the
    ``reasoning_content`` of the assistant turn that follows it (the template writes it or
    drops it: api/chat.py); ``additional_tools`` items are tools (ResponseTools.of); media
    is refused."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    thought = ""  # a reasoning item's, for the next assistant turn
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidParameter(f"{where}.role must be user, system, developer or assistant", param=f"{where}.role")  # fmt: skip
            out.append({"role": role, "content": _text(item.get("content"), where)})
        elif kind == "function_call":
            call = _call(item, where)
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text(output, where)
            out.append(
                {"role": "tool", "tool_call_id": _need(item, "call_id", where), "content": text}
            )
        elif kind == "reasoning":
            thought += item_thought(item, where)
            continue
        elif kind == "additional_tools":  # tools: ResponseTools.of
            continue
        else:
            raise InvalidParameter(
                f"{where} is an item of type {kind!r}, which Mullama does not take",
                param=f"{where}.type",
            )
        if thought and out[-1]["role"] == "assistant":  # the turn the reasoning led to
            out[-1]["reasoning_content"] = out[-1].get("reasoning_content", "") + thought
        thought = ""  # before another turn: none of its own
    return out


def _call(item: dict[str, Any], where: str) -> dict[str, Any]:
    """A function_call item as a chat tool call (a namespaced one by the name its tool has
    in the chat request)."""
    name = _need(item, "name", where)
    if isinstance(item.get("namespace"), str) and item["namespace"]:
        name = flat_name(item["namespace"], name)  # as the tools offered it
    return {"id": _need(item, "call_id", where), "type": "function",
            "function": {"name": name, "arguments": _need(item, "arguments", where)}}  # fmt: skip


def _need(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidParameter(f"{where}.{key} is required (a string)", param=f"{where}.{key}")
    return value


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidParameter(f"{where}.content must be a string or a list of parts", param=f"{where}.content")  # fmt: skip
    parts = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append(str(part.get("text", "")))
        elif kind == "refusal":
            parts.append(str(part.get("refusal", "")))
        else:
            raise InvalidParameter(
                f"{where}.content[{k}] is a part of type {kind!r}; Mullama takes text only",
                param=f"{where}.content[{k}].type",
            )
    return "".join(parts)


class ResponseStore:
    """Stored responses, in memory: at most ``size``, each for at most ``ttl`` seconds.
    Each keeps the response object and the conversation up to and including it, and the
    tenant that made it (security/tenancy.py): another tenant's id is "not found", for
    reading, deleting and continuing alike."""

    def __init__(self, size: int = 1000, ttl: float = 3600.0) -> None:
        self.size, self.ttl = size, ttl
        self._items: OrderedDict[str, _Stored] = OrderedDict()

    def put(
        self, response: dict[str, Any], conversation: list[dict[str, Any]], owner: str = ""
    ) -> None:
        self._items[response["id"]] = _Stored(time.monotonic(), owner, response, conversation)
        self._items.move_to_end(response["id"])
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def get(self, rid: str, owner: str = "") -> tuple[dict[str, Any], list[dict[str, Any]]]:
        item = self._items.get(rid)
        if item is not None and time.monotonic() - item.at > self.ttl:
            self._items.pop(rid, None)
            item = None
        if item is None or item.owner != owner:
            raise NotFound(f"no stored response with id {rid!r}", param="response_id")
        return item.response, item.conversation

    def delete(self, rid: str, owner: str = "") -> None:
        self.get(rid, owner)
        del self._items[rid]


class _Stored(NamedTuple):
    at: float
    owner: str
    response: dict[str, Any]
    conversation: list[dict[str, Any]]


def _owner() -> str:
    """The caller's tenant ("" without several keys, or with shared caches)."""
    ctx = requestctx.current.get()
    return ctx.cache_tenant if ctx is not None else ""


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": usage.cached},
        "output_tokens": usage.completion,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.prompt + usage.completion,
    }


def _part(kind: str, text: str) -> dict[str, Any]:
    """The content part of a message item (``output_text``) or of a reasoning item."""
    if kind == "reasoning":
        return reasoning_part(text)
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _item(kind: str, item_id: str, text: str, status: str) -> dict[str, Any]:
    """A message item, or a reasoning item (reasoning.py)."""
    if kind == "reasoning":
        return reasoning_item(item_id, text, status)
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [_part(kind, text)]}  # fmt: skip


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return _item("message", item_id, text, status)


def _call_item(
    item_id: str, call_id: str, name: dict[str, str], arguments: str, status: str
) -> dict[str, Any]:
    """A function_call item; ``name``: its ``name`` (and ``namespace``) fields."""
    return {"type": "function_call", "id": item_id, "call_id": call_id, **name,
            "arguments": arguments, "status": status}  # fmt: skip


# The events of an item's text, by the item's type: their name and their extra fields.
_EVENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "message": ("response.output_text", {"logprobs": []}),
    "reasoning": ("response.reasoning_text", {}),
}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponsesService:
    def __init__(self, models: ModelManager, store: ResponseStore) -> None:
        self.models = models
        self.store = store

    async def create(self, body: ResponsesRequest, rid: str) -> dict | AsyncIterator[bytes]:
        history: list[dict[str, Any]] = []
        if body.previous_response_id is not None:
            _, history = self.store.get(body.previous_response_id, _owner())
        # What a follow-up continues from: all but the instructions.
        conversation = history + input_messages(body.input)
        tools = ResponseTools.of(body.tools, body.input)
        chat = openai_chat(body.to_chat(conversation, tools))
        if chat.think.asked_by:  # the effort came as Responses' own field
            chat.think.asked_by = "reasoning.effort"
        [started] = await start_chat(self.models, chat, rid)
        out = _ResponseOut(self.store if body.store else None, body, conversation, tools)
        if body.stream:
            return out.stream(started)
        reply = await whole(started)
        output: list[dict[str, Any]] = []
        status = "incomplete" if reply.end.finish == "length" else "completed"
        if reply.reasoning:  # cut off inside the thinking: incomplete too
            done = "completed" if reply.text or reply.calls else status
            output.append(_item("reasoning", _new_id("rs"), reply.reasoning, done))
        if reply.text or not reply.calls:
            output.append(_message_item(_new_id("msg"), reply.text, status))
        for call in reply.calls:
            fn = call["function"]
            output.append(_call_item(_new_id("fc"), call["id"], tools.call(fn["name"]),
                                     fn["arguments"], "completed"))  # fmt: skip
        return out.finish(output, reply.end)

    def get(self, rid: str) -> dict[str, Any]:
        return self.store.get(rid, _owner())[0]

    def delete(self, rid: str) -> dict[str, Any]:
        self.store.delete(rid, _owner())
        return {"id": rid, "object": "response", "deleted": True}


def _base(body: ResponsesRequest) -> dict[str, Any]:
    """The response object before its output (``status`` in_progress)."""
    fmt = body.text.format if body.text is not None and body.text.format else None
    return {
        "id": _new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": body.model,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": body.reasoning.model_dump(include={"effort", "summary"})
        if body.reasoning is not None
        else None,
        "store": body.store,
        "temperature": body.temperature,
        "text": {
            "format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}
        },
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": body.tools or [],
        "top_p": body.top_p,
        "truncation": "disabled",
        "usage": None,
        "metadata": {},
    }


class _ResponseOut:
    """One response: its object whole, or its typed event stream (response.created,
    in_progress, then per output item its added / delta / done events, and
    response.completed or .incomplete); put in ``store`` at the end when one is given."""

    def __init__(
        self,
        store: ResponseStore | None,
        body: ResponsesRequest,
        conversation: list[dict[str, Any]],
        tools: ResponseTools,
    ) -> None:
        self.store, self.tools = store, tools
        self.conversation, self.owner = conversation, _owner()
        self.base = _base(body)
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the message or reasoning item written to
        self.open_text = ""
        self.calls: dict[int, dict[str, Any]] = {}

    def finish(self, output: list[dict[str, Any]], end: Finished) -> dict[str, Any]:
        done = end.finish != "length"
        response = {
            **self.base,
            "status": "completed" if done else "incomplete",
            "incomplete_details": None if done else {"reason": "max_output_tokens"},
            "output": output,
            "usage": _usage(end.usage),
        }
        if self.store is not None:
            self.store.put(response, self.conversation + _as_messages(output), self.owner)
        return response

    def ev(self, kind: str, **data: Any) -> bytes:
        self.seq += 1
        return sse({"type": kind, "sequence_number": self.seq - 1, **data}, event=kind)

    async def stream(self, started: Started) -> AsyncIterator[bytes]:
        yield self.ev("response.created", response=self.base)
        yield self.ev("response.in_progress", response=self.base)
        try:
            async with aclosing(started.events()) as events:
                async for e in events:
                    for out in self.encode(e):
                        yield out
        except MullamaError as exc:
            error = {"code": exc.code or exc.type, "message": exc.message}
            failed = {**self.base, "status": "failed", "error": error}
            yield self.ev("response.failed", response=failed)

    def encode(self, e: Event) -> list[bytes]:
        if isinstance(e, Reasoning):
            return self.piece("reasoning", e.text)
        if isinstance(e, Text):
            return self.piece("message", e.text) if e.text else []
        if isinstance(e, CallStart):
            closing = self.close_open()
            item = _call_item(_new_id("fc"), e.id, self.tools.call(e.name), "", "in_progress")
            self.output.append(item)
            self.calls[e.index] = item
            return [*closing, self.ev("response.output_item.added",
                                      output_index=len(self.output) - 1, item=item)]  # fmt: skip
        if isinstance(e, CallArgs):
            item = self.calls[e.index]
            item["arguments"] += e.piece
            return [self.ev("response.function_call_arguments.delta", item_id=item["id"],
                            output_index=self.output.index(item), delta=e.piece)]  # fmt: skip
        if isinstance(e, CallDone):
            item = self.calls[e.index]
            item["status"] = "completed"
            idx = self.output.index(item)
            return [self.ev("response.function_call_arguments.done", item_id=item["id"],
                            output_index=idx, name=item["name"], arguments=item["arguments"]),
                    self.ev("response.output_item.done", output_index=idx, item=item)]  # fmt: skip
        return self.finished(e)

    def piece(self, kind: str, piece: str) -> list[bytes]:
        """A piece of the reply's text (``kind`` "message") or of its thinking
        ("reasoning"), into the item of its kind, opened first (the other one closed)."""
        out = self.close_open() if self.open is not None and self.open["type"] != kind else []
        if self.open is None:
            prefix = "rs" if kind == "reasoning" else "msg"
            self.open = _item(kind, _new_id(prefix), "", "in_progress")
            self.open["content"] = []
            self.output.append(self.open)
            idx = len(self.output) - 1
            out += [self.ev("response.output_item.added", output_index=idx, item=self.open),
                    self.ev("response.content_part.added", item_id=self.open["id"],
                            output_index=idx, content_index=0, part=_part(kind, ""))]  # fmt: skip
        self.open_text += piece
        name, extra = _EVENTS[kind]
        out.append(self.ev(f"{name}.delta", item_id=self.open["id"],
                           output_index=self.output.index(self.open), content_index=0,
                           delta=piece, **extra))  # fmt: skip
        return out

    def close_open(self, status: str = "completed") -> list[bytes]:
        """The item being written, done: its text's done event, its part's, its own."""
        if self.open is None:
            return []
        kind, item_id = self.open["type"], self.open["id"]
        idx = self.output.index(self.open)
        done = _item(kind, item_id, self.open_text, status)
        self.output[idx] = done
        finished, self.open, self.open_text = self.open_text, None, ""
        name, extra = _EVENTS[kind]
        return [
            self.ev(f"{name}.done", item_id=item_id, output_index=idx, content_index=0,
                    text=finished, **extra),
            self.ev("response.content_part.done", item_id=item_id, output_index=idx,
                    content_index=0, part=done["content"][0]),
            self.ev("response.output_item.done", output_index=idx, item=done),
        ]  # fmt: skip

    def finished(self, e: Finished) -> list[bytes]:
        status = "incomplete" if e.finish == "length" else "completed"
        out = self.close_open(status)
        if all(item["type"] == "reasoning" for item in self.output):  # still one message
            item = _message_item(_new_id("msg"), "", status)
            self.output.append(item)
            idx = len(self.output) - 1
            out += [self.ev("response.output_item.added", output_index=idx, item=item),
                    self.ev("response.output_item.done", output_index=idx, item=item)]  # fmt: skip
        for idx, item in enumerate(self.output):
            if item["status"] == "in_progress":  # a call max_tokens cut
                item["status"] = "incomplete"
                out.append(self.ev("response.output_item.done", output_index=idx, item=item))
        response = self.finish(self.output, e)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        out.append(self.ev(kind, response=response))
        return out


def _as_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as the chat messages a follow-up continues from (its
    thinking as the turn's ``reasoning_content``)."""
    text, thought = (
        "".join(p["text"] for item in output if item["type"] == kind for p in item["content"])
        for kind in ("message", "reasoning")
    )
    calls = [
        {"id": item["call_id"], "type": "function",
         "function": {"name": _chat_name(item), "arguments": item["arguments"]}}
        for item in output if item["type"] == "function_call" and item["status"] == "completed"
    ]  # fmt: skip
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    if thought:
        message["reasoning_content"] = thought
    return [message]


def _chat_name(item: dict[str, Any]) -> str:
    """A function_call item's function as the chat request named it."""
    ns = item.get("namespace")
    return flat_name(ns, item["name"]) if ns else item["name"]
