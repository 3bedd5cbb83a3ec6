"""Ollama-compatible generate, chat and embeddings on top of the model manager."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from ...engine.protocol import shorten
from ...errors import ClientError, InvalidParameter, MullamaError
from ...models.custom import go_to_jinja
from ...wire.errors import ndjson_error
from ...wire.framing import ndjson_line
from .. import fields
from ..callreader import CallDone
from ..chat import Chat, start_chat
from ..logprobs import chat_content
from ..profiles import profile_of
from ..replies import Calls, Finished, Reasoning, Started, Text, whole
from ..thinking import probe
from ..tools import ToolCallIn, history_message, ollama_call, ollama_calls
from .schemas import ChatBody, EmbedBody, EmbeddingsBody, GenerateBody

if TYPE_CHECKING:
    from ...models.manager import ModelManager
    from ...models.router import Target


def iso_time(ts: float | None = None) -> str:
    """Ollama's timestamps: ISO 8601 in UTC with a Z; now when ``ts`` is None."""
    when = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return when.isoformat().replace("+00:00", "Z")


class Timings:
    """Real durations of one request, in nanoseconds, as Ollama reports them."""

    def __init__(self, started: int, load_ns: int) -> None:
        self.started = started
        self.load_ns = load_ns
        self.accepted = time.perf_counter_ns()

    def final(self, end: Finished) -> dict[str, int]:
        """Ollama counts only the prompt tokens computed (not those found in the cache)."""
        now = time.perf_counter_ns()
        first = end.first_token_ns if end.first_token_ns is not None else now
        return {
            "total_duration": now - self.started,
            "load_duration": self.load_ns,
            "prompt_eval_count": end.usage.prompt - end.usage.cached,
            "prompt_eval_duration": max(first - self.accepted, 1),
            "eval_count": end.usage.completion,
            "eval_duration": max(now - first, 1),
        }


class OllamaService:
    def __init__(self, models: ModelManager) -> None:
        self.models = models

    async def _load(self, name: str, keep_alive: Any) -> tuple[Target, int]:
        """The model ``name`` means (resolved once for the request), loaded if needed, and
        the load time in ns (0 if it was loaded)."""
        target = self.models.route(name)
        return target, int(await self.models.load(target, keep_alive) * 1e9)

    # ---- generate / chat -------------------------------------------------------------

    async def generate(self, body: GenerateBody, rid: str) -> dict | AsyncIterator[bytes]:
        started = time.perf_counter_ns()
        if body.images:
            raise ClientError(f"model {body.model!r} does not support images (it is text-only)")
        target, load_ns = await self._load(body.model, body.keep_alive)
        if not body.prompt and not body.system:
            return _loaded(body.model, "response", load_ns, started, body.stream)
        chat = _generate_chat(body)
        return await self._run(chat, target, rid, "response", body.stream, started, load_ns)

    async def chat(self, body: ChatBody, rid: str) -> dict | AsyncIterator[bytes]:
        started = time.perf_counter_ns()
        for i, m in enumerate(body.messages):
            if m.images:
                raise ClientError(
                    f"model {body.model!r} does not support images (messages[{i}] has images)"
                )
        target, load_ns = await self._load(body.model, body.keep_alive)
        if not body.messages:
            return _loaded(body.model, "message", load_ns, started, body.stream)
        chat = Chat(
            body.model,
            lambda native: [_history(m, i, native) for i, m in enumerate(body.messages)],
            body.sampling_params,
            body.tools,
            body.tool_choice,
            output_format="format" if body.format else None,
            keep_alive=body.keep_alive,
            think=body.thinking(),
        )
        return await self._run(chat, target, rid, "message", body.stream, started, load_ns)

    async def _run(
        self,
        chat: Chat,
        target: Target,
        rid: str,
        kind: str,
        stream: bool,
        started: int,
        load_ns: int,
    ) -> dict | AsyncIterator[bytes]:
        await self._check_think(chat, target)
        [generation] = await start_chat(self.models, chat, rid, target)  # errors before any byte
        timings = Timings(started, load_ns)
        if stream:
            return _stream(generation, chat.model, kind, timings)
        reply = await whole(generation)
        out = _final(chat.model, kind, reply.text, reply.end, timings)
        if reply.reasoning:
            _think(out, kind, reply.reasoning)
        if reply.calls:
            out["message"]["tool_calls"] = ollama_calls(reply.calls)
        if reply.end.logprobs:
            out["logprobs"] = chat_content(reply.end.logprobs)
        return out

    async def _check_think(self, chat: Chat, target: Target) -> None:
        """``think`` on (or an effort) for a model whose template has no thinking format is
        refused, as Ollama does; for a remote model (whose upstream decides) or a raw
        prompt, reported as not acted on."""
        if not chat.think.on:
            return
        if chat.raw is not None:  # a prompt sent as it is: no template, no thinking read
            fields.ignored("think")
            return
        template = chat.template or profile_of(self.models, target).chat_template
        if await probe(template) is not None:
            return
        if target.remote is not None:
            fields.ignored("think")
            return
        raise InvalidParameter(
            f"'think' is not supported: model {chat.model!r} does not support thinking "
            "(its chat template has no thinking format)",
            param="think",
        )

    # ---- embeddings --------------------------------------------------------------------

    async def embed(self, body: EmbedBody) -> dict:
        started = time.perf_counter_ns()
        target, load_ns = await self._load(body.model, body.keep_alive)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        result = await self.models.embed(target, inputs, body.truncate, body.keep_alive)
        return {
            "model": body.model,
            "embeddings": shorten(result.vectors, body.dimensions),
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": load_ns,
            "prompt_eval_count": result.prompt_tokens,
        }

    async def embeddings(self, body: EmbeddingsBody) -> dict:
        result = await self.models.embed(body.model, [body.prompt], True, body.keep_alive)
        return {"embedding": result.vectors[0]}


def _history(m: Any, index: int, native: bool) -> dict[str, Any]:
    """An Ollama message as the chat template gets it (see api/tools.py)."""
    calls = None
    if m.tool_calls:
        calls = []
        for k, call in enumerate(m.tool_calls):
            args = call.function.arguments
            text = args if isinstance(args, str) else orjson.dumps(args).decode()
            calls.append(
                ToolCallIn.model_validate(
                    {
                        "id": call.id or f"call_{k}",
                        "function": {"name": call.function.name, "arguments": text},
                    }
                )
            )
    out = history_message(
        m.role, m.content, calls, None, m.tool_name, index, need_id=False, native=native
    )
    if m.thinking and m.role == "assistant":
        out["reasoning_content"] = m.thinking  # the template keeps it or drops it
    return out


async def _stream(
    started: Started, model: str, kind: str, timings: Timings
) -> AsyncIterator[bytes]:
    """With tools, the reply is read as it is written (api/callreader.py): text outside
    the calls goes out as it comes, and a call arrives whole, in one line, as Ollama
    sends it. The model's thinking goes out as it comes, in lines of its own (their
    content empty), as Ollama's does."""
    tools = started.plan.active
    calls, sent = Calls(), 0  # sent: the calls sent whole
    try:
        async with aclosing(started.events()) as events:
            async for e in events:
                if isinstance(e, Reasoning):
                    yield ndjson_line(_think(_piece(model, kind, ""), kind, e.text))
                elif isinstance(e, Text) and not tools:
                    if e.text or e.logprobs:
                        piece = _piece(model, kind, e.text)
                        if e.logprobs:
                            piece["logprobs"] = chat_content(e.logprobs)
                        yield ndjson_line(piece)
                elif isinstance(e, Text):
                    yield ndjson_line(_piece(model, kind, e.text))
                elif isinstance(e, CallDone):
                    sent += 1
                    piece = _piece(model, kind, "")
                    piece["message"]["tool_calls"] = [ollama_call(calls.calls[e.index], e.index)]
                    yield ndjson_line(piece)
                elif isinstance(e, Finished):
                    if calls.calls and not sent:
                        # The call was cut off (num_predict, a stop): its text, as a whole
                        # reply gives it.
                        yield ndjson_line(_piece(model, kind, e.call_text))
                    yield ndjson_line(_final(model, kind, "", e, timings))
                else:
                    calls.add(e)
    except MullamaError as exc:
        yield ndjson_error(exc)


def _generate_chat(body: GenerateBody) -> Chat:
    """A generate request as a chat: the prompt as the user's turn after the system
    prompt (the request's, else the model's), or sent as it is when ``raw``. A request's
    Go template goes the way a custom model's does: converted to Jinja (one
    implementation, one set of errors) and rendered by the worker."""

    def turns(native: bool) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": body.system}] if body.system else []
        return [*system, {"role": "user", "content": body.prompt}]

    return Chat(
        body.model,
        turns,
        body.sampling_params,
        keep_alive=body.keep_alive,
        think=body.thinking(),
        default_system=body.system is None,
        template=go_to_jinja(body.template) if body.template else None,
        raw=body.prompt if body.raw else None,
    )


def _piece(model: str, kind: str, text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": iso_time()}
    if kind == "message":
        out["message"] = {"role": "assistant", "content": text}
    else:
        out["response"] = text
    out["done"] = False
    return out


def _think(out: dict[str, Any], kind: str, thinking: str) -> dict[str, Any]:
    """``out`` with the model's thinking: ``message.thinking`` on chat, ``thinking`` on
    generate."""
    (out["message"] if kind == "message" else out)["thinking"] = thinking
    return out


def _final(model: str, kind: str, text: str, end: Finished, timings: Timings) -> dict[str, Any]:
    out = _piece(model, kind, text)
    out["done"] = True
    out["done_reason"] = end.reason or "stop"
    out.update(timings.final(end))
    return out


def _loaded(model: str, kind: str, load_ns: int, started: int, stream: bool) -> Any:
    out = _piece(model, kind, "")
    out["done"] = True
    out["done_reason"] = "load"
    out["total_duration"] = time.perf_counter_ns() - started
    out["load_duration"] = load_ns
    if not stream:
        return out

    async def one() -> AsyncIterator[bytes]:
        yield ndjson_line(out)

    return one()
