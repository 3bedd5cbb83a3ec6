"""Bounds on every request knob that sizes work or memory, the same on every API. Each
is written once here; ``docs/API.md`` lists them (``limits_markdown``; a unit test keeps
the page current).

Two kinds:

- refused: a value over the bound is the client's mistake, answered with a 400 in the
  API's own error shape naming the field as that API spells it (``options.stop``,
  ``stop_sequences``). The request schemas check these with the types and functions
  below, so the words are the same on every API.
- clamped: bounds set by the model (its context size, its vocabulary) are known where
  the model is loaded: the worker brings the value within them (``bound``), as llama.cpp
  does, where a larger value asks for nothing more than the bound gives.

Measured (StopMatcher, this machine): 300,000 one-character stop strings cost ~90 ms of
Python per decode step, and every sequence of the model waits on that step; 16 stops of
1,000 characters cost at most ~6 ms, once, on the step that ends a 1,000-character
partial match (a single 100,000-character stop: ~1 s).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

from pydantic import AfterValidator, Field

from ..errors import ContextLengthExceeded, InvalidParameter
from .knobs import SEED_MAX, SEED_MIN
from .protocol import SamplingParams

MAX_STOPS = 16  # stop strings per request
MAX_STOP_CHARS = 1000  # characters in one stop string
MAX_TOP_LOGPROBS = 20  # alternatives reported per token (OpenAI's own bound)
MAX_CHOICES = 8  # OpenAI's n: answers to one chat or completion request
MAX_COMPLETIONS = 2048  # /v1/completions: prompts × n in one request
MAX_INPUTS = 2048  # texts embedded by one request (OpenAI's own bound)
MAX_TOOLS = 128  # tools offered in one request (OpenAI's own bound)


def check_stops(stops: list[str]) -> list[str]:
    """``stops`` if they are within the bounds; a ValueError (the schemas' 400, naming
    the field) if not."""
    if len(stops) > MAX_STOPS:
        raise ValueError(f"at most {MAX_STOPS} stop strings, not {len(stops)}")
    for i, stop in enumerate(stops):
        check_stop(stop, f"stop string {i}")
    return stops


def check_stop(stop: str, what: str = "the stop string") -> str:
    if len(stop) > MAX_STOP_CHARS:
        raise ValueError(f"{what} has {len(stop)} characters; at most {MAX_STOP_CHARS}")
    return stop


def check_stop_field(value: str | list[str] | None) -> str | list[str] | None:
    """A ``stop`` field that takes one string or a list (OpenAI's, Ollama's)."""
    if isinstance(value, list):
        return check_stops(value)
    return value if value is None else check_stop(value)


def check_inputs(inputs: list[str]) -> list[str]:
    if len(inputs) > MAX_INPUTS:
        raise ValueError(f"at most {MAX_INPUTS} inputs per request, not {len(inputs)}")
    return inputs


# The request schemas' types for the refused bounds.
Stop = Annotated[str, AfterValidator(check_stop)]
Stops = Annotated[list[str], AfterValidator(check_stops)]
Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)]
Choices = Annotated[int, Field(ge=1, le=MAX_CHOICES)]


def bound(params: SamplingParams, context: int, n_vocab: int) -> SamplingParams:
    """``params`` within the model, for a sequence of at most ``context`` tokens:

    - ``repeat_last_n`` of -1 (Ollama's and llama.cpp's "the whole context") or over
      ``context`` is ``context``: llama.cpp's penalty sampler allocates a window of that
      many tokens (2e9 asked for 8 GB), and a sequence has no more tokens to look at;
    - ``top_k`` at or over the vocabulary is 0 (off): it would keep every token, and
      llama.cpp takes it as a 32-bit integer (2**32 + 1 wrapped to 1, greedy);
    - stop strings over the bounds are refused here too, whatever their source (a custom
      model's stored parameters do not pass through a request schema)."""
    try:
        check_stops(params.stop)
    except ValueError as exc:
        raise InvalidParameter(str(exc), param="stop") from None
    window = params.repeat_last_n
    if window < 0 or window > context:
        window = context
    top_k = params.top_k if 0 < params.top_k < n_vocab else 0
    if (window, top_k) == (params.repeat_last_n, params.top_k):
        return params
    return replace(params, repeat_last_n=window, top_k=top_k)


@dataclass(frozen=True)
class Length:
    """The most tokens an answer may generate, and why that is fewer than the request
    asked when it is: ``cap`` (--max-tokens, a model's max_tokens) or ``context`` (the
    room the prompt leaves in it)."""

    tokens: int
    clamped: str | None = None


def fit_length(
    n_prompt: int, asked: int | None, context: int, cap: int, strict: bool, param: str
) -> Length:
    """The answer's length for a prompt of ``n_prompt`` tokens in a sequence of at most
    ``context``: what the request ``asked`` (None: as long as it goes), within the
    server's ``cap`` (0: none) and the room left. Agents ask for ``max_tokens: 32000``
    whatever the context; llama-server and Ollama generate until it is full, and so does
    Mullama, saying so (``clamped``). ``strict`` (--strict-fields) refuses such a request
    instead, as OpenAI does. A prompt that fills the context is refused either way."""
    if n_prompt >= context:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens, but the prompt "
            f"has {n_prompt} tokens.",
            param=param,
        )
    room = context - n_prompt
    wanted = asked if not cap else cap if asked is None else min(asked, cap)
    if wanted is None or wanted > room:
        if strict and asked is not None and wanted is not None:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens, but "
                f"{n_prompt + asked} were requested ({n_prompt} in the prompt, "
                f"{asked} for the completion).",
                param="max_tokens",
            )
        tokens, why = room, "context"
    else:
        tokens, why = wanted, "cap"
    return Length(tokens, why if asked is not None and tokens < asked else None)


@dataclass(frozen=True)
class Limit:
    """One row of the table in docs/API.md."""

    knob: str
    fields: str  # the field in each API that sets it
    limit: str
    over: str  # what a value over the limit gets
    why: str


_STOP_FIELDS = ("`stop` (OpenAI chat and completions, llama-server `/completion`), "
                "`stop_sequences` (Anthropic), `options.stop` (Ollama), `parameters.stop` "
                "(a custom model)")  # fmt: skip
_TOP_K_FIELDS = ("`top_k` (OpenAI extension, Anthropic, llama-server), `options.top_k` "
                 "(Ollama), `parameters.top_k`")  # fmt: skip

LIMITS: tuple[Limit, ...] = (
    Limit("stop strings", _STOP_FIELDS, f"{MAX_STOPS}", "400",
          "each stop is searched for after every token, and every sequence of the model "
          "waits on that step"),
    Limit("length of one stop string", _STOP_FIELDS, f"{MAX_STOP_CHARS} characters", "400",
          "text that could begin a stop is held back and searched again each step"),
    Limit("repeat-penalty window", "`options.repeat_last_n` (Ollama), `repeat_last_n` "
          "(llama-server), `parameters.repeat_last_n`; -1 means the context size",
          "the request's context size", "clamped",
          "llama.cpp allocates a window of that many tokens; a sequence has no more"),
    Limit("top-k", _TOP_K_FIELDS, "the model's vocabulary", "clamped (at or over it: off)",
          "keeping every token is no top-k; llama.cpp takes a 32-bit integer"),
    Limit("seed", "`seed` (OpenAI, llama-server), `options.seed` (Ollama)",
          "a 64-bit signed integer", "400", "llama.cpp uses its low 32 bits"),
    Limit("logprob alternatives", "`top_logprobs` (OpenAI chat, Ollama), `logprobs` "
          "(OpenAI completions)", f"{MAX_TOP_LOGPROBS}", "400", "OpenAI's own bound"),
    Limit("answers per request", "`n` (OpenAI chat and completions)", f"{MAX_CHOICES}",
          "400", "each answer is a sequence of its own"),
    Limit("completions per request", "`prompt` (a list) × `n` (OpenAI completions)",
          f"{MAX_COMPLETIONS}", "400", "each prompt is a sequence of its own"),
    Limit("embedding inputs", "`input` (OpenAI embeddings, Ollama `/api/embed`), `content` "
          "(llama-server's `/embedding`)",
          f"{MAX_INPUTS}", "400", "OpenAI's own bound"),
    Limit("tools", "`tools` (OpenAI chat and Responses, Anthropic, Ollama chat)",
          f"{MAX_TOOLS}", "400", "each tool's schema is compiled into the constraint"),
    Limit("completion length", "`max_tokens`, `max_completion_tokens` (OpenAI), "
          "`max_output_tokens` (Responses), `max_tokens` (Anthropic), `options.num_predict` "
          "(Ollama), `n_predict` (llama-server)", "prompt + completion within the context "
          "size (unset, or -1 / -2: what room the context has), and within `--max-tokens` "
          "or a model's `max_tokens` when set", "clamped (finish `length`, the "
          "`Mullama-Max-Tokens-Clamped` header says `ASKED->GIVEN; by=context` or `by=cap`); "
          "over the context with `--strict-fields`: 400 `context_length_exceeded`",
          "the KV cache holds the context size per sequence; agents ask for 32000 whatever "
          "the context, and llama-server and Ollama generate until it is full"),
    Limit("context per request", "`options.num_ctx` (Ollama), `parameters.num_ctx`",
          "the model's context size", "clamped", "the slots are sized when the model loads"),
    Limit("JSON schemas and tool schemas", "`response_format`, `text.format`, `format`, "
          "`json_schema`, `tools[]` parameters", "llguidance's compile limits (lexer fuel, "
          "grammar size)", "400 naming the schema path", "compiling is work on the worker"),
    Limit("the whole request", "the body (messages, prompt, tools)", "`--max-body-size` "
          "(10 MiB); the prompt within the context size", "413; 400 "
          "`context_length_exceeded`", "a body is read and templated whole"),
)  # fmt: skip


def limits_markdown() -> str:
    lines = ["| knob | fields | limit | over the limit | why |", "| --- | --- | --- | --- | --- |"]
    for row in LIMITS:
        lines.append(f"| {row.knob} | {row.fields} | {row.limit} | {row.over} | {row.why} |")
    return "\n".join(lines) + "\n"
