"""OpenAI-compatible completions, chat completions and embeddings on top of the model
manager."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...engine.protocol import Chunk, ChunkStream, GenerateRequest, normalize
from ...errors import MullamaError
from ...wire.errors import sse_error
from ..logprobs import CompletionLogprobs, chat_content
from ..profiles import Profile, profile_of
from ..replies import Started
from ..streaming import SSE_DONE, aiter_merge, sse
from ..tools import CallArgs, CallReader, CallStart, Content, ToolPlan, plan_chat_tools
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

if TYPE_CHECKING:
    from ...models.manager import ModelManager


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[Any] = field(default_factory=list)  # the engine's entries, in order
    cached_tokens: int = 0


async def _primed(gen: ChunkStream) -> tuple[Chunk, ChunkStream]:
    """Wait for the engine to accept the request (errors surface here, before any byte of
    the response is sent)."""
    try:
        first = await gen.__anext__()
    except BaseException:
        await gen.aclose()
        raise
    return first, gen


async def start_generations(
    models: ModelManager, model: str, requests: list[GenerateRequest], keep_alive: Any = None
) -> tuple[list[int], list[ChunkStream]]:
    """Start every generation and wait until each is accepted; on any error, stop them all."""
    started: list[tuple[Chunk, ChunkStream]] = []
    try:
        for req in requests:
            started.append(await _primed(models.generate(model, req, keep_alive)))
    except BaseException:
        for _, gen in started:
            await gen.aclose()
        raise
    return [c.prompt_tokens for c, _ in started], [g for _, g in started]


def _usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    """OpenAI's usage; ``cached``: the prompt tokens found in the KV cache."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


class OpenAIService:
    def __init__(self, models: ModelManager) -> None:
        self.models = models

    # ---- requests -> engine requests ----------------------------------------------

    def _chat_requests(
        self, req: ChatCompletionRequest, rid: str, plan: ToolPlan, profile: Profile
    ) -> list[GenerateRequest]:
        native = plan.active and plan.native
        messages = [m.for_prompt(i, req.model, native) for i, m in enumerate(req.messages)]
        max_tokens = req.max_completion_tokens or req.max_tokens
        messages = plan.with_instruction(profile.messages(messages))
        tools = plan.tools_for_template()
        out = []
        for i in range(req.n):
            params = req.to_sampling_params(profile, max_tokens)
            if params.json_schema is None:  # a response_format leaves auto's calls free
                params.tool_calls = plan.constraint()
            if params.seed is not None:
                params.seed += i
            out.append(
                GenerateRequest(
                    f"{rid}/{i}",
                    params,
                    messages=messages,
                    template=profile.template,
                    tools=tools,
                    cache_salt=req.cache_salt,
                )  # fmt: skip
            )
        return out

    def _completion_requests(self, req: CompletionRequest, rid: str) -> list[GenerateRequest]:
        prompts = req.prompts()
        profile = profile_of(self.models, req.model)
        max_tokens = req.max_tokens
        if max_tokens is None:
            max_tokens = profile.defaults.get("max_tokens") or 16
        out = []
        for p_idx, prompt in enumerate(prompts):
            for i in range(req.n):
                params = req.to_sampling_params(profile, max_tokens)
                if params.seed is not None:
                    params.seed += i
                sid, salt = f"{rid}/{p_idx}/{i}", req.cache_salt
                if isinstance(prompt, str):
                    out.append(GenerateRequest(sid, params, prompt=prompt, cache_salt=salt))
                else:
                    out.append(GenerateRequest(sid, params, prompt_tokens=prompt, cache_salt=salt))
        return out

    # ---- chat ------------------------------------------------------------------------

    async def _start(
        self, req: ChatCompletionRequest, rid: str
    ) -> tuple[ToolPlan, list[int], list[ChunkStream]]:
        """Plan the request's tools for its template, and start its generations."""
        fmt = req.response_format
        profile = profile_of(self.models, req.model)
        plan = await plan_chat_tools(
            req.tools, req.tool_choice, req.parallel_tool_calls,
            "response_format" if fmt is not None and fmt.type != "text" else None,
            profile.chat_template,
        )  # fmt: skip
        requests = self._chat_requests(req, rid, plan, profile)
        prompt_tokens, gens = await start_generations(
            self.models, req.model, requests, req.keep_alive
        )
        return plan, prompt_tokens, gens

    async def start_chat(self, req: ChatCompletionRequest, rid: str) -> Started:
        """One chat generation for the APIs that write replies their own way (Responses,
        Anthropic Messages): the same path as a chat completion, up to the reply."""
        plan, prompt_tokens, gens = await self._start(req, rid)
        return Started(plan, prompt_tokens[0], gens[0])

    async def chat(self, req: ChatCompletionRequest, rid: str) -> dict | AsyncIterator[bytes]:
        plan, prompt_tokens, gens = await self._start(req, rid)
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._chat_stream(
                cid, created, req.model, prompt_tokens, gens, include_usage, req.logprobs, plan
            )
        choices = await _collect(gens)
        messages = [_reply(plan, c) for c in choices]
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": req.model,
            "choices": [
                {
                    "index": i,
                    "message": messages[i][0],
                    "logprobs": {"content": chat_content(c.logprobs)} if req.logprobs else None,
                    "finish_reason": messages[i][1],
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(choices[0].prompt_tokens or prompt_tokens[0],
                            sum(c.completion_tokens for c in choices), choices[0].cached_tokens),
        }  # fmt: skip

    async def _chat_stream(
        self,
        cid: str,
        created: int,
        model: str,
        prompt_tokens: list[int],
        gens: list[ChunkStream],
        include_usage: bool,
        logprobs: bool = False,
        plan: ToolPlan | None = None,
    ) -> AsyncIterator[bytes]:
        """With tools, a reply that may be a call is held back until it is known: sent
        as tool-call deltas if it is one, as text if not."""
        held = [_Held(plan) if plan is not None and plan.active else None for _ in gens]

        def chunk(
            index: int, delta: dict[str, Any], finish: str | None, entries: Any = None
        ) -> bytes:
            lp = {"content": chat_content(entries)} if entries else None
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
                ],
            }
            if include_usage:
                obj["usage"] = None
            return sse(obj)

        completion = [0] * len(gens)
        cached, prompt = 0, prompt_tokens[0]
        try:
            for i in range(len(gens)):
                yield chunk(i, {"role": "assistant", "content": ""}, None)
            async for i, c in aiter_merge(gens):
                completion[i] = c.completion_tokens
                if i == 0:
                    cached, prompt = c.cached_tokens, c.prompt_tokens or prompt
                hold = held[i]
                if hold is not None:
                    for delta, entries, finish in hold.feed(c):
                        yield chunk(i, delta, finish, entries if logprobs else None)
                    continue
                if c.text or (logprobs and c.logprobs):
                    yield chunk(i, {"content": c.text}, None, c.logprobs)
                if c.finish_reason is not None:
                    yield chunk(i, {}, c.finish_reason)
            if include_usage:
                yield sse(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": _usage(prompt, sum(completion), cached),
                    }
                )
        except MullamaError as exc:
            yield sse_error(exc)
        yield SSE_DONE

    # ---- completions ---------------------------------------------------------------

    async def completions(self, req: CompletionRequest, rid: str) -> dict | AsyncIterator[bytes]:
        requests = self._completion_requests(req, rid)
        prompt_tokens, gens = await start_generations(
            self.models, req.model, requests, req.keep_alive
        )
        cid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        n_prompt = sum(prompt_tokens[:: req.n])
        try:
            prompts = await self._echoed(req) if req.echo else []
        except BaseException:
            for gen in gens:
                await gen.aclose()
            raise
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            echo = [prompts[i // req.n] for i in range(len(gens))] if req.echo else None
            return self._completion_stream(
                cid, created, req.model, n_prompt, gens, include_usage,
                req.logprobs is not None, echo, req.n,
            )  # fmt: skip
        choices = await _collect(gens)
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": req.model,
            "choices": [
                {
                    "index": i,
                    "text": (prompts[i // req.n] if req.echo else "") + "".join(c.text),
                    "logprobs": (
                        CompletionLogprobs().add(c.logprobs) if req.logprobs is not None else None
                    ),
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(
                sum(c.prompt_tokens for c in choices[:: req.n]) or n_prompt,
                sum(c.completion_tokens for c in choices),
                sum(c.cached_tokens for c in choices[:: req.n]),
            ),  # fmt: skip
        }

    async def _completion_stream(
        self,
        cid: str,
        created: int,
        model: str,
        n_prompt: int,
        gens: list[ChunkStream],
        include_usage: bool,
        logprobs: bool = False,
        echo: list[str] | None = None,
        per_prompt: int = 1,
    ) -> AsyncIterator[bytes]:
        """``echo``: each choice's prompt text, sent ahead of its first text;
        ``per_prompt``: choices per prompt (``n``)."""
        completion = [0] * len(gens)
        cached = [0] * len(gens)
        prompts = [0] * len(gens)  # a remote engine's counts come with its last chunk
        offsets = [CompletionLogprobs() for _ in gens]
        prefix = list(echo) if echo is not None else [""] * len(gens)
        base = {"id": cid, "object": "text_completion", "created": created, "model": model}
        try:
            async for i, c in aiter_merge(gens):
                completion[i] = c.completion_tokens
                cached[i] = c.cached_tokens
                prompts[i] = c.prompt_tokens or prompts[i]
                if c.text or c.finish_reason is not None or (logprobs and c.logprobs) or prefix[i]:
                    text, prefix[i] = prefix[i] + c.text, ""
                    yield sse(
                        {
                            **base,
                            "choices": [
                                {
                                    "index": i,
                                    "text": text,
                                    "logprobs": (
                                        offsets[i].add(c.logprobs or []) if logprobs else None
                                    ),
                                    "finish_reason": c.finish_reason,
                                }
                            ],
                        }
                    )
            if include_usage:
                n_prompt = sum(prompts[::per_prompt]) or n_prompt
                usage = _usage(n_prompt, sum(completion), sum(cached[::per_prompt]))
                yield sse({**base, "choices": [], "usage": usage})
        except MullamaError as exc:
            yield sse_error(exc)
        yield SSE_DONE

    async def _echoed(self, req: CompletionRequest) -> list[str]:
        """The prompts' text, for ``echo`` (token prompts are detokenized)."""
        out = []
        for prompt in req.prompts():
            if isinstance(prompt, str):
                out.append(prompt)
            else:
                out.append(await self.models.detokenize(req.model, prompt, req.keep_alive))
        return out

    # ---- embeddings ----------------------------------------------------------------

    async def embeddings(self, req: EmbeddingRequest) -> dict:
        inputs = [req.input] if isinstance(req.input, str) else req.input
        result = await self.models.embed(req.model, inputs, keep_alive=req.keep_alive)
        vectors = result.vectors
        if req.dimensions is not None:
            vectors = [normalize(v[: req.dimensions]) for v in vectors]
        encode = _base64_floats if req.encoding_format == "base64" else (lambda v: v)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(v)}
                for i, v in enumerate(vectors)
            ],
            "model": req.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }


def _base64_floats(vec: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()


def _reply(plan: ToolPlan, choice: _Choice) -> tuple[dict[str, Any], str | None]:
    """A whole reply as a chat message, and its finish reason."""
    reply = plan.read("".join(choice.text), choice.finish_reason)
    if reply.calls:
        message = {"role": "assistant", "content": reply.content or None, "tool_calls": reply.calls}
    else:
        message = {"role": "assistant", "content": reply.content}
    return message, reply.finish(choice.finish_reason)


class _Held:
    """One streamed choice of a request with tools: the reply is read as it is written
    (api/tools.CallReader). Text outside the calls goes out as content (a tail that
    could begin a call marker is held back); a call is announced once its name is
    known, and its arguments go out as the model writes them."""

    def __init__(self, plan: ToolPlan) -> None:
        self.reader = CallReader(plan)
        self.entries: list[Any] = []

    def feed(self, c: Chunk) -> list[tuple[dict[str, Any], Any, str | None]]:
        self.entries += c.logprobs or []
        final = c.finish_reason is not None
        out: list[tuple[dict[str, Any], Any, str | None]] = []
        for e in self.reader.push(c.text, final):
            if isinstance(e, Content):
                entries, self.entries = self.entries, []
                out.append(({"content": e.text}, entries, None))
            elif isinstance(e, CallStart):
                self.entries = []  # a call's tokens carry no logprob entries
                first = {"index": e.index, "id": e.id, "type": "function",
                         "function": {"name": e.name, "arguments": ""}}  # fmt: skip
                out.append(({"tool_calls": [first]}, None, None))
            elif isinstance(e, CallArgs):
                piece = {"index": e.index, "function": {"arguments": e.piece}}
                out.append(({"tool_calls": [piece]}, None, None))
        if final:
            out.append(({}, None, self.reader.finish(c.finish_reason)))
        return out


async def _collect(gens: list[ChunkStream]) -> list[_Choice]:
    choices = [_Choice() for _ in gens]
    async for i, c in aiter_merge(gens):
        ch = choices[i]
        if c.text:
            ch.text.append(c.text)
        if c.logprobs:
            ch.logprobs.extend(c.logprobs)
        ch.completion_tokens = c.completion_tokens
        ch.prompt_tokens = c.prompt_tokens or ch.prompt_tokens  # a remote engine's come last
        ch.cached_tokens = c.cached_tokens
        if c.finish_reason is not None:
            ch.finish_reason = c.finish_reason
    return choices
