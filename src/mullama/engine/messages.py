"""The frames between the daemon's worker client (engine/client.py) and the worker process
(engine/worker.py) that nothing else uses: the framing, the daemon→worker commands and
the worker→daemon events, and the readers that turn a frame into its message type.

The frames the API layer or the model manager build or read themselves (GenerateRequest,
TokenizeRequest, Tokens, WorkerSpec, WorkerInfo, CacheReport) are declared in
engine/protocol.py, with the base every message shares; these use it. Frames are
length-prefixed JSON (never pickle); daemon→worker frames carry ``op``, worker→daemon
frames ``ev``, and every message about one sequence names it by ``id``.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import orjson

from ..errors import MullamaError
from .protocol import (
    CacheReport,
    GenerateRequest,
    ProtocolError,
    TokenizeRequest,
    Tokens,
    WorkerInfo,
    _Message,
    _need,
    _strict,
)

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


# ---- daemon → worker --------------------------------------------------------------


@dataclass
class Cancel(_Message):
    """Stop a sequence (its client went away); its slot is freed at the next step."""

    TAG = ("op", "cancel")
    id: str


@dataclass
class EmbedRequest(_Message):
    """Embed ``inputs``; one longer than the embedding context is refused, or truncated
    when ``truncate`` (the result names those). ``norm``: how the pooled vectors are
    normalised (llama-server's ``embd_normalize``; 2: unit length). ``per_token``: the
    caller can carry a vector per token (a model with pooling none; refused otherwise)."""

    TAG = ("op", "embed")
    id: str
    inputs: list[str]
    truncate: bool = False
    norm: int = 2
    per_token: bool = False


@dataclass
class RankRequest(_Message):
    """Score each (query, document) pair with a reranker (a model with rank pooling)."""

    TAG = ("op", "rank")
    id: str
    query: str
    documents: list[str]


@dataclass
class DetokenizeRequest(_Message):
    TAG = ("op", "detokenize")
    id: str
    tokens: list[int]


@dataclass
class Shutdown(_Message):
    TAG = ("op", "shutdown")


@dataclass
class Ping(_Message):
    """Answered by the worker's reader thread with a Pong: the daemon's liveness probe (a
    stopped or hung worker does not answer)."""

    TAG = ("op", "ping")
    id: str


Command = (
    GenerateRequest
    | Cancel
    | EmbedRequest
    | RankRequest
    | TokenizeRequest
    | DetokenizeRequest
    | Shutdown
    | Ping
)


def read_command(msg: Any) -> Command:
    """A daemon→worker frame as its message type; ProtocolError if it is none."""
    try:
        op = msg["op"]
        if op == "generate":
            return GenerateRequest.from_wire(msg)
        kind = _COMMANDS[op]
        return kind.from_wire(msg)  # type: ignore[no-any-return]
    except ProtocolError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed frame from the daemon ({exc!r}): {msg!r:.200}") from exc


_COMMANDS: dict[str, type[_Message]] = {
    c.TAG[1]: c
    for c in (Cancel, EmbedRequest, RankRequest, TokenizeRequest, DetokenizeRequest, Shutdown, Ping)
}


# ---- worker → daemon --------------------------------------------------------------


@dataclass
class Ready(_Message):
    TAG = ("ev", "ready")
    info: WorkerInfo

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "ready", "info": asdict(self.info)}

    @classmethod
    def from_wire(cls, msg: dict[str, Any]) -> Ready:
        _strict(cls, {k: v for k, v in msg.items() if k != "ev"})
        return cls(WorkerInfo(**_strict(WorkerInfo, _need(msg, "info", dict))))


@dataclass
class LoadFailed(_Message):
    TAG = ("ev", "load_failed")
    ERRORS = frozenset({"error"})
    error: MullamaError


@dataclass
class Accepted(_Message):
    """The worker tokenized the request and queued it."""

    TAG = ("ev", "accepted")
    id: str
    prompt_tokens: int
    max_tokens: int = 0  # the most tokens the answer may generate
    clamped: str | None = None  # "cap" or "context" when that is fewer than max_tokens asked


@dataclass
class Failed(_Message):
    """One request failed in the worker: the error as the client will see it."""

    TAG = ("ev", "error")
    ERRORS = frozenset({"error"})
    id: str
    error: MullamaError


@dataclass
class EmbedResult(_Message):
    TAG = ("ev", "embed")
    id: str
    vectors: list[list[float]]
    tokens: int
    truncated: list[int] = field(default_factory=list)  # the inputs cut to fit
    token_vectors: list[list[list[float]]] = field(default_factory=list)  # pooling none


@dataclass
class RankResult(_Message):
    TAG = ("ev", "rank")
    id: str
    scores: list[float]  # one per document, in their order
    tokens: int


@dataclass
class Text(_Message):
    TAG = ("ev", "text")
    id: str
    text: str


@dataclass
class Pong(_Message):
    TAG = ("ev", "pong")
    id: str


class StepRow(NamedTuple):
    """One sequence's output of one decode step."""

    id: str
    text: str
    n_generated: int
    n_prompt: int
    finish: str | None  # "stop" | "length" | None while generating
    # With logprobs: one entry per token of this step, [bytes, logprob, [[bytes, lp]...]]
    logprobs: list[Any] | None = None
    stop: str | None = None  # the stop string that ended it, when one did
    reasoning: str = ""  # new thinking text (SamplingParams.thinking), apart from text
    n_reasoning: int = 0  # thinking tokens generated so far (a part of n_generated)


@dataclass
class Step:
    """A decode step's outputs and the worker's numbers after it: one frame per step that
    decoded anything, a token out or not (a long prompt computed in chunks), as each step
    is progress for every request the engine holds (the stream idle timeout)."""

    rows: list[StepRow]
    # (id, seconds waited in the queue, prompt tokens found in the KV cache) given a slot
    admitted: list[tuple[str, float, int]]
    active: int
    queued: int
    kv_used: int
    generated_total: int
    threads: int
    cache: CacheReport | None = None  # when the slots or the RAM cache changed

    def to_wire(self) -> dict[str, Any]:
        # By hand, not asdict (a deep copy, on every step); rows as plain tuples (orjson
        # does not take NamedTuple subclasses).
        return {
            "ev": "step",
            "rows": [tuple(row) for row in self.rows],
            "admitted": self.admitted,
            "active": self.active,
            "queued": self.queued,
            "kv_used": self.kv_used,
            "generated_total": self.generated_total,
            "threads": self.threads,
            "cache": None if self.cache is None else asdict(self.cache),
        }

    @classmethod
    def from_wire(cls, msg: dict[str, Any]) -> Step:
        data = _strict(cls, {k: v for k, v in msg.items() if k != "ev"})
        data["rows"] = [StepRow(*row) for row in data["rows"]]
        if data.get("cache") is not None:
            data["cache"] = CacheReport(**_strict(CacheReport, _need(data, "cache", dict)))
        return cls(**data)


Event = Step | Ready | LoadFailed | Accepted | Failed | EmbedResult | RankResult | Tokens | Text
# The answers to one request, delivered to the request's queue by its id.
Reply = Accepted | Failed | EmbedResult | RankResult | Tokens | Text | Pong

_EVENTS: dict[str, type[_Message]] = {
    e.TAG[1]: e
    for e in (Ready, LoadFailed, Accepted, Failed, EmbedResult, RankResult, Tokens, Text, Pong)
}


def read_event(msg: Any) -> Event:
    """A worker→daemon frame as its message type; ProtocolError if it is none."""
    try:
        ev = msg["ev"]
        if ev == "step":
            return Step.from_wire(msg)
        return _EVENTS[ev].from_wire(msg)  # type: ignore[no-any-return]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed frame from the worker ({exc!r}): {msg!r:.200}") from exc
