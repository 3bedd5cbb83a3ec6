"""A generation on a remote OpenAI-compatible engine (vLLM, SGLang, TGI, llama-server):
the engine request (``GenerateRequest``) as an upstream ``/v1/chat/completions`` or
``/v1/completions`` body, and the upstream's stream of events read back as the same
``Chunk`` deltas a local worker sends, so every API of the daemon works unchanged on top.

Tool calls come back from the upstream as structured deltas; they are written into the
chunk text in a private call syntax (``REMOTE_SYNTAX``, marked by control characters the
upstream's content never carries: they are stripped from it), which the API layer's
``CallReader`` reads like any template's syntax. A reasoning model's thinking comes back
as the upstream writes it apart from the content (``reasoning_content``, as vLLM, SGLang
and llama-server write it, or ``reasoning``) and goes into the chunks' ``reasoning``; the
upstream parses its own model's thinking, so the engine request's ThinkSyntax is not
sent, but its template variables are (``chat_template_kwargs``). The upstream's usage
(prompt, cached, completion and reasoning tokens) arrives on the last chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ClientError
from . import knobs
from .protocol import CallSyntax, Chunk, GenerateRequest, SamplingParams

# Calls as the reply's text: \x02[{"name": "f", "arguments": {...}},{...}]\x03
REMOTE_SYNTAX = CallSyntax(open="\x02[", separator=",", close="]\x03", args_key="arguments")
_MARKS = str.maketrans("", "", "\x02\x03")
_DEFAULTS = SamplingParams()


def sampling_fields(p: SamplingParams, model: str) -> dict[str, Any]:
    """The sampling part of an upstream body; what no OpenAI-compatible engine takes is
    refused by name (never dropped)."""
    if p.context_limit is not None:
        raise ClientError(
            f"model {model!r} is served by a remote engine, which sets its own context "
            "size: num_ctx is not taken per request",
            param="num_ctx",
        )
    if p.prompt_logprobs:
        raise ClientError(
            f"model {model!r} is served by a remote engine: echo with logprobs (prompt "
            "scoring) is not available on it",
            param="echo",
        )
    out = _knobs(p, model)
    if p.max_tokens is not None:
        out["max_tokens"] = p.max_tokens
    if p.stop:
        out["stop"] = p.stop
    if p.ignore_eos:
        out["ignore_eos"] = True
    if p.json_schema is not None:
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": p.json_schema or {"type": "object"}},
        }
    return out


def _knobs(p: SamplingParams, model: str) -> dict[str, Any]:
    """The sampling knobs under their upstream names (engine/knobs.py), each sent when
    it is not the default (temperature and top_p always: the upstream's defaults are
    others); a knob set that no upstream name carries is refused by name."""
    out: dict[str, Any] = {}
    for knob in knobs.KNOBS:
        value = getattr(p, knob.name)
        if value == getattr(_DEFAULTS, knob.name) and not knob.always:
            continue
        if not knob.remote:
            raise ClientError(
                f"model {model!r} is served by a remote engine, which does not take {knob.name}",
                param=knob.name,
            )
        out.update(dict.fromkeys(knob.remote, value))
    return out


def _upstream_message(m: dict[str, Any], last_calls: list[str]) -> dict[str, Any]:
    """A message of the engine request (calls with object arguments, as templates take
    them) in OpenAI's wire shape (arguments as JSON text; a tool result names its call)."""
    out = {k: v for k, v in m.items() if v is not None}
    calls = m.get("tool_calls")
    if calls:
        out["tool_calls"] = [
            {
                "id": c.get("id") or f"call_{k}",
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": _json_text(c["function"].get("arguments")),
                },
            }
            for k, c in enumerate(calls)
        ]
        last_calls[:] = [c["id"] for c in out["tool_calls"]]
    if m.get("role") == "tool" and not m.get("tool_call_id"):
        # Ollama's results name only their tool: they answer the last calls in turn.
        out["tool_call_id"] = last_calls.pop(0) if last_calls else "call_0"
    return out


def _json_text(args: Any) -> str:
    return (
        args if isinstance(args, str) else orjson.dumps(args if args is not None else {}).decode()
    )


def chat_body(req: GenerateRequest, model: str, upstream_model: str) -> dict[str, Any]:
    """The upstream ``/v1/chat/completions`` body of a chat generation (always streamed:
    the daemon assembles whole replies itself)."""
    if req.template is not None:
        raise ClientError(
            f"model {model!r} is served by a remote engine, which applies its own chat "
            "template: a template is not taken",
            param="template",
        )
    last: list[str] = []
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": [_upstream_message(m, last) for m in req.messages or []],
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling_fields(req.params, model),
    }
    grammar = req.params.tool_calls
    if req.tools:
        body["tools"] = req.tools
        if grammar is not None:
            if grammar.forced and len(req.tools) == 1:
                body["tool_choice"] = {
                    "type": "function",
                    "function": {"name": req.tools[0]["function"]["name"]},
                }
            else:
                body["tool_choice"] = "required" if grammar.forced else "auto"
            body["parallel_tool_calls"] = grammar.max_calls > 1
    if req.template_vars:  # the thinking switch, chat_template_kwargs (vLLM, SGLang, llama.cpp)
        body["chat_template_kwargs"] = req.template_vars
    if req.params.logprobs is not None:
        body["logprobs"] = True
        if req.params.logprobs:
            body["top_logprobs"] = req.params.logprobs
    return body


def completion_body(req: GenerateRequest, model: str, upstream_model: str) -> dict[str, Any]:
    """The upstream ``/v1/completions`` body of a prompt (text or token ids)."""
    prompt: Any = req.prompt if req.prompt is not None else req.prompt_tokens
    body: dict[str, Any] = {
        "model": upstream_model,
        "prompt": prompt,
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling_fields(req.params, model),
    }
    if req.params.logprobs is not None:
        body["logprobs"] = req.params.logprobs
    return body


def _entry_token(token: str, raw: Any) -> str | list[int]:
    """The engine entries' token: its text, or its bytes when they are not whole UTF-8."""
    if isinstance(raw, list) and bytes(raw).decode("utf-8", "replace") != token:
        return raw
    return token


def chat_entries(content: list[dict[str, Any]]) -> list[Any]:
    """OpenAI chat ``logprobs.content`` items as the engine's entries."""
    out = []
    for item in content:
        top = [
            [_entry_token(a.get("token", ""), a.get("bytes")), a.get("logprob")]
            for a in item.get("top_logprobs") or []
        ]
        out.append(
            [_entry_token(item.get("token", ""), item.get("bytes")), item.get("logprob"), top]
        )
    return out


def completion_entries(lp: dict[str, Any]) -> list[Any]:
    """The legacy completions shape (``tokens``, ``token_logprobs``, ``top_logprobs``)
    as the engine's entries; a chat-shaped ``content`` list (llama-server) as well."""
    if isinstance(lp.get("content"), list):
        return chat_entries(lp["content"])
    tops = lp.get("top_logprobs") or []
    out = []
    for i, (token, value) in enumerate(
        zip(lp.get("tokens") or [], lp.get("token_logprobs") or [], strict=False)
    ):
        alts = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        out.append([token, value, [[t, v] for t, v in alts.items()]])
    return out


@dataclass
class Usage:
    prompt: int = 0
    completion: int = 0
    cached: int = 0
    reasoning: int = 0


@dataclass
class StreamReader:
    """Reads one upstream stream's events (parsed SSE data) into chunks. ``chat``: the
    chat completions shape (deltas), else the completions shape (text)."""

    chat: bool
    n: int = 0  # pieces so far (a piece is a token on vLLM and llama-server)
    finish: str | None = None
    usage: Usage | None = None
    n_reasoning: int = 0  # pieces of thinking so far
    calls: int = 0  # calls opened
    call_args: int = 0  # characters of the open call's arguments
    _call_index: int | None = None

    def read(self, event: dict[str, Any]) -> Chunk | None:
        """The chunk of one event (None when it carries nothing new)."""
        usage = event.get("usage")
        if isinstance(usage, dict):
            details = usage.get("prompt_tokens_details") or {}
            done = usage.get("completion_tokens_details") or {}
            self.usage = Usage(
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
                int(details.get("cached_tokens") or 0),
                int(done.get("reasoning_tokens") or 0),
            )
        choices = event.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        text, entries, thinking = "", None, ""
        if self.chat:
            delta = choice.get("delta") or {}
            text = (delta.get("content") or "").translate(_MARKS)
            thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
            for call in delta.get("tool_calls") or []:
                text += self._call_piece(call)
            lp = choice.get("logprobs") or {}
            if lp.get("content"):
                entries = chat_entries(lp["content"])
        else:
            text = (choice.get("text") or "").translate(_MARKS)
            if isinstance(choice.get("logprobs"), dict):
                entries = completion_entries(choice["logprobs"]) or None
        if choice.get("finish_reason"):
            # "tool_calls" is read off the calls by the API layer; the rest ends as "stop"
            self.finish = "length" if choice["finish_reason"] == "length" else "stop"
        if not text and not entries and not thinking:
            return None
        self.n += 1
        if thinking:
            self.n_reasoning += 1
        return Chunk(
            text, self.n, logprobs=entries, reasoning=thinking, reasoning_tokens=self.n_reasoning
        )

    def _call_piece(self, call: dict[str, Any]) -> str:
        fn = call.get("function") or {}
        index = call.get("index", self.calls - 1 if fn.get("name") is None else self.calls)
        out = ""
        if index != self._call_index and fn.get("name"):
            out += self._end_call() + ("\x02[" if self.calls == 0 else ",")
            out += '{"name": ' + orjson.dumps(fn["name"]).decode() + ', "arguments": '
            self._call_index, self.calls, self.call_args = index, self.calls + 1, 0
        args = fn.get("arguments") or ""
        self.call_args += len(args)
        return out + args

    def _end_call(self) -> str:
        if self._call_index is None:
            return ""
        return ("" if self.call_args else "{}") + "}"

    def last(self) -> Chunk:
        """The final chunk: what closes open calls, the finish reason and the counts."""
        text = self._end_call() + "]\x03" if self._call_index is not None else ""
        self._call_index = None
        usage = self.usage or Usage(0, self.n, 0)
        return Chunk(
            text, usage.completion or self.n, usage.prompt, self.finish or "stop",
            cached_tokens=usage.cached, reasoning_tokens=usage.reasoning or self.n_reasoning,
        )  # fmt: skip
