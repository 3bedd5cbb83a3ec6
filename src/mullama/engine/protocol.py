"""What the API layer knows about the engine: request/chunk dataclasses, the EngineClient
protocol, and the framed wire format between daemon and worker (length-prefixed JSON,
never pickle)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import orjson

_HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024


def encode_frame(obj: Any) -> bytes:
    body = orjson.dumps(obj)
    return _HEADER.pack(len(body)) + body


def decode_header(header: bytes) -> int:
    (n,) = _HEADER.unpack(header)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes is over the limit")
    return n


HEADER_SIZE = _HEADER.size


@dataclass
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    context_limit: int | None = None  # per-request cap on prompt + completion tokens
    json_schema: dict[str, Any] | None = None  # constrain output to JSON ({} = any JSON)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SamplingParams:
        """The worker's side of ``GenerateRequest.to_wire``: a key this version does not
        know is an error, never silently dropped."""
        unknown = set(data) - _SAMPLING_FIELDS
        if unknown:
            raise ValueError(f"unknown sampling parameters: {', '.join(sorted(unknown))}")
        return cls(**data)


_SAMPLING_FIELDS = frozenset(f.name for f in fields(SamplingParams))


@dataclass
class GenerateRequest:
    """Either ``messages`` (rendered with the model's chat template) or ``prompt``."""

    request_id: str
    params: SamplingParams
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    add_special: bool = True
    template: str | None = None  # a Jinja chat template overriding the model's (custom models)

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Chunk:
    """A piece of one generation. ``text`` is new text only."""

    text: str = ""
    completion_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str | None = None  # "stop" | "length" | None while generating


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass
class ModelStats:
    active: int = 0
    queued: int = 0
    kv_used: int = 0
    kv_size: int = 0
    generated_total: int = 0
    threads: int = 0  # decode threads of the last step (its share of the CPUs)


class EngineClient(Protocol):
    """The narrow interface api/ uses: generate, embed, and some numbers."""

    name: str

    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]: ...

    async def embed(self, inputs: list[str], truncate: bool = False) -> Embeddings: ...

    def stats(self) -> ModelStats: ...


# ---- observation hooks ------------------------------------------------------------
# The engine client reports what happens to each generation through these; the daemon
# plugs in metrics, access-log and tracing (engine/ never imports those itself).


class GenerationObserver(Protocol):
    """One generation (one sequence), from the daemon's side; times are taken on call."""

    def accepted(self, prompt_tokens: int) -> None: ...

    def admitted(self, queue_wait: float) -> None:
        """The worker gave the sequence a slot after ``queue_wait`` seconds in its queue."""

    def output(self, n_generated: int, finish: str | None) -> None:
        """A step produced tokens for it (``n_generated`` so far; the first call is the
        first token)."""

    def closed(self, error: BaseException | None) -> None:
        """Always called once at the end: finished, failed (``error``) or cancelled."""


class EngineObserver(Protocol):
    def generation(self, model: str, request_id: str) -> GenerationObserver: ...

    def embedded(self, model: str, prompt_tokens: int) -> None: ...

    def loaded(self, model: str, seconds: float, error: BaseException | None) -> None: ...


class NullGenerationObserver:
    def accepted(self, prompt_tokens: int) -> None:
        pass

    def admitted(self, queue_wait: float) -> None:
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
