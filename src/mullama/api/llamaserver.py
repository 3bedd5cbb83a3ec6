"""llama-server's native endpoints, which its users' scripts call: ``POST /completion``
(``prompt``, ``n_predict``, ``stream``, ``stop``, the sampling fields; answered with
``content``, ``stop``, ``stop_type``, ``tokens_predicted``, ``timings``) and ``GET
/props``, and ``POST /embedding`` (also ``/embeddings``: ``content`` or ``input``,
``embd_normalize``; a vector per token for a model with pooling none). ``model`` may be
left out, as llama-server serves one: the first ``--model``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import asdict
from typing import Any, ClassVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field, create_model

from .. import __version__
from ..engine import knobs, limits
from ..engine.protocol import SamplingParams
from ..errors import ClientError, MullamaError
from ..wire.errors import openai_body
from ..wire.framing import ORJSONResponse, sse
from . import answers as a
from .body import parse_body, validate
from .chat import completion_requests, start
from .disclosure import shown_path
from .fallback import answer
from .fields import Refusing, StrictBody
from .openai.schemas import CompletionRequest
from .openapi import MODEL_ERRORS, SSE, documented
from .profiles import profile_of
from .replies import Finished, Started, Text, whole
from .streaming import DisconnectAwareStream, unless_disconnected

router = APIRouter()


# The sampling knobs as llama-server names them, with its bounds (engine/knobs.py).
_Knobs = create_model("_Knobs", __base__=StrictBody, **knobs.fields("llamaserver"))  # type: ignore[call-overload]


class CompletionBody(_Knobs, Refusing):  # type: ignore[valid-type,misc]
    REFUSED: ClassVar[dict[str, str]] = {
        "grammar": "GBNF grammars are not implemented; use json_schema",
        "samplers": "a custom sampler order is not implemented",
        "n_probs": "probabilities are served by /v1/completions (logprobs)",
        "lora": "LoRA adapters are not implemented",
        "logit_bias": "token biases are not implemented",
        **knobs.refused("llamaserver"),
    }
    NEUTRAL = knobs.neutral("llamaserver")
    # Prompt caching is always on; slots are chosen by the scheduler.
    IGNORED = frozenset({"cache_prompt", "id_slot", "n_keep", "return_tokens", "timings_per_token",
                         "n_indent", "t_max_prompt_ms", "n_cmpl"})  # fmt: skip

    model: str | None = None
    prompt: str | list[int]
    n_predict: int = Field(default=-1, ge=-1)
    stream: bool = False
    stop: limits.Stops | None = None
    ignore_eos: bool = False
    json_schema: dict[str, Any] | None = None
    keep_alive: str | int | float | None = None
    fallback: bool = True  # extension: False keeps the request on its model (--fallback)
    cache_salt: str | None = Field(default=None, min_length=1, max_length=1024)  # vLLM's

    def to_completion(self, model: str) -> CompletionRequest:
        """The OpenAI completion this is, without its sampling knobs: those are set on
        the engine request by ``set_knobs`` (llama-server's bounds are not OpenAI's)."""
        body: dict[str, Any] = {"model": model, "prompt": self.prompt, "stream": self.stream,
                                "ignore_eos": self.ignore_eos}  # fmt: skip
        if self.n_predict > 0:
            body["max_tokens"] = self.n_predict
        elif self.n_predict == 0:  # the OpenAI API allows 0 only for scoring: set after
            body["max_tokens"] = 1
        for name in ("stop", "keep_alive", "cache_salt"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        if self.json_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "schema", "schema": self.json_schema}}  # fmt: skip
        return validate(CompletionRequest, body)  # its own rules (a prompt list not empty)

    def set_knobs(self, params: SamplingParams) -> None:
        """The sampling knobs this request sets, over the model's defaults."""
        for name, value in knobs.values(self, "llamaserver").items():
            setattr(params, name, value)


def _model(request: Request, given: str | None) -> str:
    name = given or request.app.state.models.default_name
    if not name:
        raise ClientError("no model is served; give one with --model", param="model")
    return name


@router.post("/completion")
@documented(
    CompletionBody,
    a.LlamaCompletion,
    stream=SSE,
    chunk=a.LlamaChunk,
    errors=MODEL_ERRORS,
    example={"prompt": "Once upon a time", "n_predict": 8},
)
async def completion(request: Request) -> Response:
    body = await parse_body(request, CompletionBody)
    body = body.model_copy(update={"model": _model(request, body.model)})
    return await answer(request, body, lambda b: _complete(request, b))  # type: ignore[no-any-return]


async def _complete(request: Request, body: CompletionBody) -> Response:
    name = str(body.model)
    req = body.to_completion(name)
    models = request.app.state.models
    target = models.route(name)  # the name resolved once for the request
    rid = request.scope["state"]["request_id"]
    requests = completion_requests(req, rid, profile_of(models, target))
    if body.n_predict == -1:  # llama-server's "until the end": the context's room
        requests[0].params.max_tokens = None
    elif body.n_predict == 0:  # nothing generated: the prompt is evaluated into the cache
        requests[0].params.max_tokens = 0
    body.set_knobs(requests[0].params)
    at = time.perf_counter_ns()
    [started] = await start(models, target, requests, req.keep_alive)
    run = _Run(name, started.prompt_tokens, at, requests[0].params)
    if body.stream:
        return DisconnectAwareStream(run.stream(started), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})  # fmt: skip
    reply = await whole(started)
    return ORJSONResponse(run.final(reply.text, reply.end))


class _Run:
    """One /completion: its pieces and its end in llama-server's shapes, with its timings
    (``started``: when it was sent to the engine, ``perf_counter_ns``)."""

    def __init__(self, model: str, n_prompt: int, started: int, params: SamplingParams) -> None:
        self.model, self.n_prompt, self.started = model, n_prompt, started
        self.params = params

    def final(self, content: str, end: Finished) -> dict[str, Any]:
        """The last answer: ``content`` (none in a stream), how it ended, its timings."""
        now = time.perf_counter_ns()
        first = end.first_token_ns if end.first_token_ns is not None else now
        prompt_ms = (first - self.started) / 1e6
        predicted_ms = (now - first) / 1e6
        stop = end.stop
        stop_type = "limit" if end.reason == "length" else ("word" if stop else "eos")
        n, n_prompt, cached = end.usage.completion, end.usage.prompt, end.usage.cached
        return {
            "index": 0,
            "content": content,
            "tokens": [],
            "id_slot": -1,
            "stop": True,
            "model": self.model,
            "tokens_predicted": n,
            "tokens_evaluated": n_prompt,
            "generation_settings": {
                "n_predict": -1 if self.params.max_tokens is None else self.params.max_tokens,
                **{
                    k: v
                    for k, v in asdict(self.params).items()
                    if k
                    in ("temperature", "top_k", "top_p", "min_p", "seed", "repeat_penalty", "stop")
                },
            },  # fmt: skip
            "has_new_line": "\n" in content,
            "truncated": False,
            "stop_type": stop_type,
            "stopping_word": stop or "",
            "tokens_cached": cached,
            "timings": {
                "cache_n": cached,
                "prompt_n": n_prompt - cached,
                "prompt_ms": prompt_ms,
                "prompt_per_token_ms": prompt_ms / max(1, n_prompt - cached),
                "prompt_per_second": (n_prompt - cached) / max(prompt_ms / 1000, 1e-9),
                "predicted_n": n,
                "predicted_ms": predicted_ms,
                "predicted_per_token_ms": predicted_ms / max(1, n),
                "predicted_per_second": n / max(predicted_ms / 1000, 1e-9),
            },
        }

    async def stream(self, started: Started) -> AsyncIterator[bytes]:
        """``data:`` lines of ``content`` pieces, then the final one with ``stop: true``
        (llama-server's stream has no ``[DONE]``)."""
        try:
            async with aclosing(started.events()) as events:
                async for e in events:
                    if isinstance(e, Text) and e.text:
                        yield sse({"index": 0, "content": e.text, "tokens": [], "stop": False,
                                   "id_slot": -1, "tokens_predicted": e.completion,
                                   "tokens_evaluated": self.n_prompt})  # fmt: skip
                    elif isinstance(e, Finished):
                        yield sse(self.final("", e))
        except MullamaError as exc:
            yield sse(openai_body(exc))


class EmbeddingBody(StrictBody):
    """llama-server's /embedding body: the text(s) as ``content`` (or ``input``)."""

    model: str | None = None
    content: str | list[str] | None = None
    input: str | list[str] | None = None
    # llama-server's: -1 none, 0 int16 range, 1 taxicab, 2 Euclidean, p > 2 the p-norm
    embd_normalize: int = Field(default=2, ge=-1, le=1000)
    keep_alive: str | int | float | None = None

    def texts(self) -> list[str]:
        value = self.content if self.content is not None else self.input
        if value is None:
            raise ClientError('"input" or "content" must be provided', param="content")
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ClientError('"input" must not be empty', param="content")
        try:
            return limits.check_inputs(texts)
        except ValueError as exc:
            raise ClientError(str(exc), param="content") from None


@router.post("/embedding")
@router.post("/embeddings")
@documented(EmbeddingBody, a.LlamaEmbeddings, errors=MODEL_ERRORS,
            example={"content": "hello", "embd_normalize": 2})  # fmt: skip
async def embedding(request: Request) -> Response:
    """Each input's vector as llama-server answers its non-OpenAI embeddings route: a
    list of ``{"index", "embedding": [vector]}``, normalised by ``embd_normalize`` (-1
    none, 0 int16 range, 2 unit length, p > 2 the p-norm); a model with pooling none gives
    each input's vector per token, unnormalised."""
    body = await parse_body(request, EmbeddingBody)
    models = request.app.state.models
    texts = body.texts()
    result = await unless_disconnected(request, models.embed(
        _model(request, body.model), texts, False, body.keep_alive, norm=body.embd_normalize,
        per_token=True,
    ))  # fmt: skip
    vectors = result.token_vectors or [[v] for v in result.vectors]
    return ORJSONResponse([{"index": i, "embedding": v} for i, v in enumerate(vectors)])


@router.get("/props")
@documented(ok=a.Props, errors=(400, 404, 409))
async def props(request: Request, model: str | None = None) -> Response:
    models = request.app.state.models
    name = _model(request, model)
    info = models.loaded_info(name)  # a GET never loads (or evicts) a model
    profile = profile_of(models, name)
    defaults = SamplingParams(**profile.defaults)
    cap = profile.max_tokens_cap[0]
    return ORJSONResponse(
        {
            "default_generation_settings": {
                "n_ctx": info.context_size,
                "params": {
                    k: v
                    for k, v in asdict(defaults).items()
                    if k
                    in (
                        "temperature",
                        "top_k",
                        "top_p",
                        "min_p",
                        "repeat_penalty",
                        "repeat_last_n",
                        "presence_penalty",
                        "frequency_penalty",
                    )
                }
                | {
                    # llama-server's -n (here --max-tokens), -1: none; its seed 4294967295
                    # (LLAMA_DEFAULT_SEED) is a random one per request.
                    "n_predict": min((n for n in (cap, defaults.max_tokens) if n), default=-1),
                    "seed": defaults.seed if defaults.seed is not None else 4294967295,
                },
            },  # fmt: skip
            "total_slots": info.parallel,
            "model_alias": name,
            # The file's path for an admin; otherwise the model's name (api/disclosure.py).
            "model_path": shown_path(request, models.find(name).path, name),
            "chat_template": profile.chat_template or info.chat_template,
            "bos_token": info.bos_token,
            "eos_token": info.eos_token,
            "modalities": {"vision": False, "audio": False},
            "build_info": f"Mullama {__version__}",
        }
    )
