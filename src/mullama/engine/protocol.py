"""What the API layer knows about the engine: the request (SamplingParams, GenerateRequest),
the chunks of an answer, embeddings, the model's numbers and the observation hooks; and
the daemon↔worker frames the API layer or the model manager build or read themselves
(TokenizeRequest, Tokens, WorkerSpec, WorkerInfo, CacheReport), with the base every frame
shares. The other frames, and the framing, are in engine/messages.py. Each message is
declared once with ``to_wire``/``from_wire``, used by both ends."""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Protocol

from ..errors import InvalidParameter, MullamaError
from . import knobs


@functools.cache
def field_names(cls: type) -> frozenset[str]:
    """The field names of dataclass ``cls`` (computed once per class)."""
    return frozenset(f.name for f in fields(cls))


def _strict(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as keyword arguments of dataclass ``cls``; a key this version does not
    know is an error (a frame from another version), never silently dropped."""
    unknown = data.keys() - field_names(cls)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    return data


class ProtocolError(ValueError):
    """A frame that is no message of this version: a bug or a version mismatch, logged by
    the end that reads it (never answered with a silent default)."""


class _Message:
    """A frame type: ``TAG`` is its ``op`` (daemon→worker) or ``ev`` (worker→daemon)."""

    TAG: ClassVar[tuple[str, str]]
    # Fields that hold a MullamaError, sent in its wire form (errors.py).
    ERRORS: ClassVar[frozenset[str]] = frozenset()

    def to_wire(self) -> dict[str, Any]:
        key, tag = self.TAG
        out: dict[str, Any] = {key: tag}
        for name in field_names(type(self)):
            value = getattr(self, name)
            out[name] = value.to_wire() if name in self.ERRORS else value
        return out

    @classmethod
    def from_wire(cls, msg: dict[str, Any]) -> Any:
        data = _strict(cls, {k: v for k, v in msg.items() if k != cls.TAG[0]})
        for name in cls.ERRORS & data.keys():
            data[name] = MullamaError.from_wire(data[name])
        return cls(**data)


@dataclass
class WorkerSpec:
    """What a worker process serves and how: the daemon resolves every value."""

    name: str
    path: str
    parallel: int = 4
    context_size: int = 4096
    batch_size: int = 2048
    kv_unified: bool = False
    flash_attn: str = "auto"  # auto (llama.cpp's choice: on where the device has it), on, off
    burst_wait_ms: float = 0.0
    threads: int = 1  # resolved by the daemon from the CPU budget (engine/cpu.py)
    cpu_share_dir: str | None = None  # where busy workers split the CPUs (engine/cpushare.py)
    gpu_layers: int = 0
    log_level: str = "info"
    log_format: str = "auto"
    log_file: str | None = None
    load_timeout: float = 300.0
    cache_ram: int = 0  # bytes of host RAM for KV states of conversations out of a slot
    preempt_after: float = 0.0  # seconds a short request waits before preempting (0: never)
    sessions_dir: str | None = None  # where conversations are saved across restarts
    session_disk: int = 0  # bytes they may take there; 0: not saved
    session_interval: float = 0.0  # also save every this many idle seconds (0: at exit only)
    model_id: str = ""  # the model file's identity (digest), saved sessions must match it
    max_tokens: int = 0  # the most tokens one answer may generate (--max-tokens); 0: no cap
    strict_fields: bool = False  # a max_tokens beyond the context is refused, not clamped
    # LoRA adapters (path, scale) applied to every context of this model (--lora).
    lora: list[tuple[str, float]] = field(default_factory=list)
    # Embedding pooling (none, mean, cls, last, rank); None: the GGUF's, else mean.
    pooling: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> WorkerSpec:
        return cls(**_strict(cls, data))


@dataclass
class CallSyntax:
    """How a chat template writes tool calls (read off the template by the daemon):
    ``open`` before the first call and ``close`` after the last (a list's brackets),
    ``begin`` and ``end`` around each call's JSON object, ``separator`` between calls,
    and the key of the object that holds the arguments."""

    open: str = ""
    begin: str = ""
    end: str = ""
    separator: str = ""
    close: str = ""
    args_key: str = "arguments"

    @property
    def trigger(self) -> str:
        """The text that starts the calls ("" when a call is a bare JSON object)."""
        return self.open or self.begin


@dataclass
class ToolGrammar:
    """The constraint of a request with tools: ``calls`` are the JSON schemas of the call
    objects it may write (``{"name": const, args_key: parameters}``); ``forced``: calls
    from the first token (``required``, a named function), else free text until the
    calls' trigger, then held to the syntax (``auto``); at most ``max_calls`` calls."""

    syntax: CallSyntax
    calls: list[dict[str, Any]]
    forced: bool
    max_calls: int
    defs: dict[str, Any] = field(default_factory=dict)  # the tools' $defs, by new names

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ToolGrammar:
        data = _strict(cls, data)
        data["syntax"] = CallSyntax(**_strict(CallSyntax, _need(data, "syntax", dict)))
        return cls(**data)


@dataclass
class ThinkSyntax:
    """How a reply's thinking is written, read off the chat template by the daemon
    (api/thinking.py): the block ``open`` ... ``close`` (text, or special tokens written as
    text); ``answer``: text that may begin the answer after the block, dropped with it
    (gpt-oss's ``<|start|>assistant<|channel|>final<|message|>``). ``budget``: the
    thinking tokens after which the engine closes the block itself and the model goes on
    to answer (None: no limit; 0: closed as soon as it opens); ``force_open``: the engine
    writes ``open`` itself when the prompt does not (thinking asked for, or a constraint
    that applies to the answer after the thinking)."""

    open: str
    close: str
    answer: str = ""
    budget: int | None = None
    force_open: bool = False


@dataclass
@knobs.declare(after="max_tokens")
class SamplingParams:
    """The engine's request options. The sampling knobs (temperature, top_p, top_k, ...)
    are fields too, one per knob of engine/knobs.py, with its type and default, after
    ``max_tokens``."""

    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    context_limit: int | None = None  # per-request cap on prompt + completion tokens
    json_schema: dict[str, Any] | None = None  # constrain output to JSON ({} = any JSON)
    tool_calls: ToolGrammar | None = None  # or to text and tool calls in the template's syntax
    logprobs: int | None = None  # report each token's logprob and this many alternatives
    prompt_logprobs: bool = False  # the prompt's tokens' too (echo scoring); needs logprobs
    # The reply's thinking, written apart from its text (None: all of it is text).
    thinking: ThinkSyntax | None = None

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SamplingParams:
        """The worker's side of ``GenerateRequest.to_wire``: a key this version does not
        know is an error, never silently dropped."""
        data = _strict(cls, data)
        if data.get("tool_calls") is not None:
            data["tool_calls"] = ToolGrammar.from_wire(_need(data, "tool_calls", dict))
        if data.get("thinking") is not None:
            data["thinking"] = ThinkSyntax(**_strict(ThinkSyntax, _need(data, "thinking", dict)))
        return cls(**data)


@dataclass
class GenerateRequest:
    """``messages`` (rendered with the model's chat template), ``prompt`` (text) or
    ``prompt_tokens`` (token ids, checked against the vocabulary)."""

    request_id: str
    params: SamplingParams
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    prompt_tokens: list[int] | None = None
    add_special: bool = True
    template: str | None = None  # a Jinja chat template overriding the model's (custom models)
    tools: list[dict[str, Any]] | None = None  # for templates that describe tools themselves
    # More variables for the chat template (its thinking switch, chat_template_kwargs).
    template_vars: dict[str, Any] | None = None
    cache_salt: str | None = None  # the client's cache_salt (vLLM's), as it sent it
    # The namespace of prefix reuse and of the response cache: a short opaque string (a
    # hash of the caller's tenant and cache_salt; "" when caches are shared), set by the
    # model manager. A prompt's KV is reused only by a request of the same scope.
    cache_scope: str = ""

    def to_wire(self, wire_id: str) -> dict[str, Any]:
        """The ``generate`` frame; ``wire_id`` names the sequence on the socket."""
        out = asdict(self)
        out["id"] = wire_id
        del out["request_id"]
        return {"op": "generate", **out}

    @classmethod
    def from_wire(cls, msg: dict[str, Any]) -> GenerateRequest:
        data = {k: v for k, v in msg.items() if k not in ("op", "id")}
        data = _strict(cls, {**data, "request_id": _need(msg, "id", str)})
        data["params"] = SamplingParams.from_wire(_need(data, "params", dict))
        return cls(**data)


def _need(msg: dict[str, Any], key: str, kind: type) -> Any:
    value = msg.get(key)
    if not isinstance(value, kind):
        raise ProtocolError(f"field {key!r} must be a {kind.__name__}, got {value!r}")
    return value


# ---- frames the API layer also builds or reads (the others: engine/messages.py) ----


@dataclass
class TokenizeRequest(_Message):
    """``text`` as it is, or ``messages`` through the chat template (``template`` a custom
    model's); ``with_pieces`` also returns each token's text."""

    TAG = ("op", "tokenize")
    id: str
    text: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special: bool = True
    add_generation_prompt: bool = True
    template: str | None = None
    with_pieces: bool = False
    tools: list[dict[str, Any]] | None = None  # for templates that describe tools themselves
    template_vars: dict[str, Any] | None = None  # more variables for the chat template


@dataclass
class WorkerInfo:
    """What a worker found when it loaded its model (the ``ready`` frame)."""

    n_ctx_train: int
    n_embd: int
    n_params: int
    size_bytes: int
    description: str
    context_size: int  # per sequence, after llama.cpp's rounding
    parallel: int
    kv_size: int
    threads: int
    load_seconds: float
    n_vocab: int
    bos_token: str  # the tokens' text ("" when the model has none)
    eos_token: str
    add_bos: bool
    chat_template: str | None  # the GGUF's own
    flash_attn: str  # on, off, or auto: left to llama.cpp
    pooling: str = "mean"  # of its embeddings; "rank": a reranker


@dataclass
class Tokens(_Message):
    TAG = ("ev", "tokens")
    id: str
    tokens: list[int]
    pieces: list[str] | None = None


@dataclass
class CacheReport:
    """The worker's KV reuse state: what each slot holds (its running sequence's tokens
    in KV, or an idle slot's kept prefix) and the host-RAM cache's totals; the save and
    restore times since the last report."""

    slots: list[int]
    # The request id of each slot's running sequence (None: idle), for status pages.
    slot_ids: list[str | None] = field(default_factory=list)
    ram_bytes: int = 0
    ram_entries: int = 0
    ram_hits: int = 0
    ram_misses: int = 0
    ram_saves: int = 0
    ram_evictions: int = 0
    ram_failed: int = 0
    moves: int = 0  # running sequences moved to close a gap in the slot ids
    preemptions: int = 0  # answers paused (KV to RAM) so that a short request could start
    save_seconds: list[float] = field(default_factory=list)
    restore_seconds: list[float] = field(default_factory=list)


@dataclass
class Chunk:
    """A piece of one generation. ``text`` is new text only."""

    text: str = ""
    completion_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str | None = None  # "stop" | "length" | None while generating
    logprobs: list[Any] | None = None  # the StepRow entries of this chunk's tokens
    stop: str | None = None  # the stop string that ended the generation, when one did
    cached_tokens: int = 0  # prompt tokens found in the KV cache (not computed again)
    # The first chunk: the most tokens the answer may generate, and why that is fewer than
    # the request's max_tokens when it is ("cap": --max-tokens; "context": the room left).
    max_tokens: int = 0
    clamped: str | None = None
    # New thinking text (apart from ``text``), and the thinking tokens generated so far
    # (the markers included; a part of completion_tokens).
    reasoning: str = ""
    reasoning_tokens: int = 0


# What a generation is on the daemon side: closing it early (aclose) cancels it.
ChunkStream = AsyncGenerator[Chunk, None]


def normalize(vec: list[float]) -> list[float]:
    """Unit length (L2), as OpenAI's and Ollama's embeddings are; a zero vector stays."""
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


def embd_normalize(vec: list[float], norm: int) -> list[float]:
    """llama-server's ``embd_normalize`` (common_embd_normalize): -1 none, 0 to the int16
    range by the largest absolute value, 2 Euclidean (unit length), else the p-norm."""
    if norm == -1:
        return list(vec)
    if norm == 0:
        total = max((abs(x) for x in vec), default=0.0) / 32760.0
    elif norm == 2:
        total = math.sqrt(sum(x * x for x in vec))
    else:  # scaled by the largest value first, so a large p neither overflows nor underflows
        top = max((abs(x) for x in vec), default=0.0)
        total = top * sum((abs(x) / top) ** norm for x in vec) ** (1.0 / norm) if top else 0.0
    scale = 1.0 / total if total > 0 else 0.0
    return [x * scale for x in vec]


def shorten(vectors: list[list[float]], dimensions: int | None) -> list[list[float]]:
    """Matryoshka truncation, as OpenAI's and Ollama's ``dimensions``: the first
    ``dimensions`` values of each vector, normalised again; more than the model gives is
    refused (None: the vectors as they are)."""
    if dimensions is None or not vectors:
        return vectors
    width = len(vectors[0])
    if dimensions > width:
        raise InvalidParameter(
            f"dimensions is {dimensions}, but the model's embeddings have {width}",
            param="dimensions",
        )
    return vectors if dimensions == width else [normalize(v[:dimensions]) for v in vectors]


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int
    truncated: list[int] = field(default_factory=list)  # the inputs cut to fit (truncate)
    # With pooling none, asked for (per_token): each input's vector per token, as the
    # model gave them; ``vectors`` is then empty.
    token_vectors: list[list[list[float]]] = field(default_factory=list)


@dataclass
class Ranked:
    """A reranker's scores, one per document in their order, and the tokens it read."""

    scores: list[float]
    prompt_tokens: int


@dataclass
class ModelStats:
    active: int = 0
    queued: int = 0
    kv_used: int = 0
    kv_size: int = 0
    generated_total: int = 0
    threads: int = 0  # decode threads of the last step (its share of the CPUs)
    cache: CacheReport | None = None  # the last one the worker sent


# ---- observation hooks ------------------------------------------------------------
# The engine client reports what happens to each generation through these; the daemon
# plugs in metrics, access-log and tracing (engine/ never imports those itself).


class GenerationObserver(Protocol):
    """One generation (one sequence), from the daemon's side; times are taken on call."""

    def accepted(self, prompt_tokens: int) -> None: ...

    def admitted(self, queue_wait: float, reused: int = 0) -> None:
        """The worker gave the sequence a slot after ``queue_wait`` seconds in its queue,
        with ``reused`` of its prompt tokens already in the KV cache."""

    def output(self, n_generated: int, finish: str | None) -> None:
        """A step produced tokens for it (``n_generated`` so far; the first call is the
        first token)."""

    def closed(self, error: BaseException | None) -> None:
        """Always called once at the end: finished, failed (``error``) or cancelled."""


class EngineObserver(Protocol):
    def generation(self, model: str, request_id: str) -> GenerationObserver: ...

    def embedded(self, model: str, prompt_tokens: int) -> None: ...

    def loaded(self, model: str, seconds: float, error: BaseException | None) -> None: ...

    def kv_cache(self, model: str, report: CacheReport) -> None:
        """The worker's KV reuse state changed (slots, host-RAM cache, save/restore times)."""

    def replica_request(
        self, model: str, replica: str, outcome: str, ttft: float | None, tokens: int
    ) -> None:
        """A request to a remote model's replica ended (``outcome``: ok, error, cancelled,
        connect_error or the upstream's status), with its time to first token."""


class NullGenerationObserver:
    def accepted(self, prompt_tokens: int) -> None:
        pass

    def admitted(self, queue_wait: float, reused: int = 0) -> None:
        pass

    def output(self, n_generated: int, finish: str | None) -> None:
        pass

    def closed(self, error: BaseException | None) -> None:
        pass


class NullObserver:
    _gen = NullGenerationObserver()

    def generation(self, model: str, request_id: str) -> GenerationObserver:
        return self._gen

    def embedded(self, model: str, prompt_tokens: int) -> None:
        pass

    def loaded(self, model: str, seconds: float, error: BaseException | None) -> None:
        pass

    def kv_cache(self, model: str, report: CacheReport) -> None:
        pass

    def replica_request(
        self, model: str, replica: str, outcome: str, ttft: float | None, tokens: int
    ) -> None:
        pass
