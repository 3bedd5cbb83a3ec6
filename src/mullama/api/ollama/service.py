"""Ollama-compatible generate, chat and embeddings on top of the model manager."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from ...engine.protocol import Chunk, ChunkStream, GenerateRequest
from ...errors import ClientError, MullamaError
from ...models.custom import go_to_jinja
from ...wire.errors import ndjson_error
from ..logprobs import chat_content
from ..profiles import profile_of
from ..streaming import ndjson_line
from ..tools import (
    CallDone,
    CallReader,
    Content,
    ToolCallIn,
    ToolPlan,
    history_message,
    ollama_call,
    ollama_calls,
    plan_chat_tools,
)
from .schemas import ChatBody, EmbedBody, EmbeddingsBody, GenerateBody

if TYPE_CHECKING:
    from ...models.manager import ModelManager


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
        self.first: int | None = None

    def mark_token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter_ns()

    def final(self, prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        """``prompt_tokens``: those computed (Ollama counts only those)."""
        end = time.perf_counter_ns()
        first = self.first if self.first is not None else end
        return {
            "total_duration": end - self.started,
            "load_duration": self.load_ns,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": max(first - self.accepted, 1),
            "eval_count": completion_tokens,
            "eval_duration": max(end - first, 1),
        }


class OllamaService:
    def __init__(self, models: ModelManager) -> None:
        self.models = models

    async def _load(self, name: str, keep_alive: Any) -> int:
        """Load the model if needed; returns the load time in ns (0 if it was loaded)."""
        return int(await self.models.load(name, keep_alive) * 1e9)

    # ---- generate / chat -------------------------------------------------------------

    def _generate_request(self, body: GenerateBody, rid: str) -> GenerateRequest:
        profile = profile_of(self.models, body.model)
        params = body.sampling_params(profile)
        if body.raw:
            return GenerateRequest(rid, params, prompt=body.prompt, add_special=False)
        system = body.system if body.system is not None else profile.system
        messages = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": body.prompt})
        # A request's Go template goes the way a custom model's does: converted to Jinja
        # (one implementation, one set of errors) and rendered by the worker.
        template = go_to_jinja(body.template) if body.template else profile.template
        return GenerateRequest(rid, params, messages=messages, template=template)

    async def generate(self, body: GenerateBody, rid: str) -> dict | AsyncIterator[bytes]:
        started = time.perf_counter_ns()
        if body.images:
            raise ClientError(f"model {body.model!r} does not support images (it is text-only)")
        load_ns = await self._load(body.model, body.keep_alive)
        if not body.prompt and not body.system:
            return _loaded(body.model, "response", load_ns, started, body.stream)
        req = self._generate_request(body, rid)
        gen = self.models.generate(body.model, req, body.keep_alive)
        return await self._run(gen, body.model, "response", body.stream, started, load_ns)

    async def chat(self, body: ChatBody, rid: str) -> dict | AsyncIterator[bytes]:
        started = time.perf_counter_ns()
        for i, m in enumerate(body.messages):
            if m.images:
                raise ClientError(
                    f"model {body.model!r} does not support images (messages[{i}] has images)"
                )
        load_ns = await self._load(body.model, body.keep_alive)
        if not body.messages:
            return _loaded(body.model, "message", load_ns, started, body.stream)
        profile = profile_of(self.models, body.model)
        plan = await plan_chat_tools(
            body.tools, body.tool_choice, None, "format" if body.format else None,
            profile.chat_template,
        )  # fmt: skip
        native = plan.active and plan.native
        messages = [_history(m, i, native) for i, m in enumerate(body.messages)]
        messages = plan.with_instruction(profile.messages(messages))
        params = body.sampling_params(profile)
        if params.json_schema is None:  # a format leaves auto's calls free
            params.tool_calls = plan.constraint()
        req = GenerateRequest(
            rid, params, messages=messages, template=profile.template,
            tools=plan.tools_for_template(),
        )  # fmt: skip
        gen = self.models.generate(body.model, req, body.keep_alive)
        return await self._run(gen, body.model, "message", body.stream, started, load_ns, plan)

    async def _run(
        self,
        gen: ChunkStream,
        model: str,
        kind: str,
        stream: bool,
        started: int,
        load_ns: int,
        plan: ToolPlan | None = None,
    ) -> dict | AsyncIterator[bytes]:
        try:
            first = await gen.__anext__()  # errors before the response starts: HTTP errors
        except BaseException:
            await gen.aclose()
            raise
        timings = Timings(started, load_ns)
        if stream:
            return self._stream(gen, first, model, kind, timings, plan)
        parts: list[str] = []
        entries: list[Any] = []
        last = first
        async for c in gen:
            if c.text:
                timings.mark_token()
                parts.append(c.text)
            if c.logprobs:
                entries.extend(c.logprobs)
            last = c
        text = "".join(parts)
        reply = plan.read(text, last.finish_reason) if plan is not None else None
        content = reply.content if reply is not None else text
        out = _final(model, kind, content, last, last.prompt_tokens or first.prompt_tokens, timings)
        if reply is not None and reply.calls:
            out["message"]["tool_calls"] = ollama_calls(reply.calls)
        if entries:
            out["logprobs"] = chat_content(entries)
        return out

    async def _stream(
        self,
        gen: ChunkStream,
        first: Chunk,
        model: str,
        kind: str,
        timings: Timings,
        plan: ToolPlan | None = None,
    ) -> AsyncIterator[bytes]:
        """With tools, the reply is read as it is written (api/tools.CallReader): text
        outside the calls goes out as it comes, and a call arrives whole, in one line, as
        Ollama sends it."""
        last = first
        reader = CallReader(plan) if plan is not None and plan.active else None
        sent = 0  # calls sent whole
        try:
            async for c in gen:
                last = c
                if c.text:
                    timings.mark_token()
                if reader is None:
                    if c.text or c.logprobs:
                        piece = _piece(model, kind, c.text)
                        if c.logprobs:
                            piece["logprobs"] = chat_content(c.logprobs)
                        yield ndjson_line(piece)
                    continue
                for e in reader.push(c.text, c.finish_reason is not None):
                    if isinstance(e, Content):
                        yield ndjson_line(_piece(model, kind, e.text))
                    elif isinstance(e, CallDone):
                        sent += 1
                        piece = _piece(model, kind, "")
                        done = ollama_call(reader.calls[e.index], e.index)
                        piece["message"]["tool_calls"] = [done]
                        yield ndjson_line(piece)
            if reader is not None and reader.calls and not sent:
                # The call was cut off (num_predict, a stop): its text, as a whole reply gives it.
                yield ndjson_line(_piece(model, kind, reader.text[reader.mark :]))
            prompt = last.prompt_tokens or first.prompt_tokens  # a remote engine's come last
            yield ndjson_line(_final(model, kind, "", last, prompt, timings))
        except MullamaError as exc:
            yield ndjson_error(exc)
        finally:
            await gen.aclose()

    # ---- embeddings --------------------------------------------------------------------

    async def embed(self, body: EmbedBody) -> dict:
        started = time.perf_counter_ns()
        load_ns = await self._load(body.model, body.keep_alive)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        result = await self.models.embed(body.model, inputs, body.truncate, body.keep_alive)
        return {
            "model": body.model,
            "embeddings": result.vectors,
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
    return history_message(
        m.role, m.content, calls, None, m.tool_name, index, need_id=False, native=native
    )


def _piece(model: str, kind: str, text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": iso_time()}
    if kind == "message":
        out["message"] = {"role": "assistant", "content": text}
    else:
        out["response"] = text
    out["done"] = False
    return out


def _final(
    model: str, kind: str, text: str, last: Chunk, prompt_tokens: int, timings: Timings
) -> dict[str, Any]:
    out = _piece(model, kind, text)
    out["done"] = True
    out["done_reason"] = last.finish_reason or "stop"
    out.update(timings.final(prompt_tokens - last.cached_tokens, last.completion_tokens))
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
