"""The sampling knobs, each declared once: its type, its default, its bounds, and its name
in each dialect. Everything else reads this table: the engine request's fields
(``SamplingParams``), the request models of every API (OpenAI, Anthropic, Ollama's
``options`` and a custom model's ``parameters``, llama-server's ``/completion``),
``--model-opt`` and the GGUF's defaults, the body sent to a remote engine, and the table
in ``docs/API.md``. A knob the engine does not implement is declared too (``MISSING``),
so that each dialect refuses it by name instead of dropping it.

Adding a knob: a ``Knob`` row here (or the ``MISSING`` row moved here), and the engine's
sampler (engine/llama.py) reading the field.

Dialects (``Dialect``): ``openai`` (chat and completions, extensions included),
``anthropic`` (Messages), ``ollama`` (``options`` and a custom model's ``parameters``,
Ollama's Modelfile names), ``llamaserver`` (``/completion``), ``defaults`` (``--model-opt``
and a GGUF's ``general.sampling.*``: a model's request defaults, checked by the bounds a
request has) and ``remote`` (the upstream OpenAI-compatible body).

This module imports nothing of Mullama's but pydantic, so that ``engine/``, ``api/`` and
``models/`` can all read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic.fields import FieldInfo

Dialect = Literal["openai", "anthropic", "ollama", "llamaserver", "defaults"]
DIALECTS: tuple[Dialect, ...] = ("openai", "anthropic", "ollama", "llamaserver", "defaults")
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # a 64-bit integer: whole numbers cross the socket so


@dataclass(frozen=True)
class Range:
    """Bounds as pydantic takes them (``ge``/``gt`` below, ``le`` above; None: none)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def text(self) -> str:
        if (self.ge, self.le) == (SEED_MIN, SEED_MAX):
            return "a 64-bit signed integer"
        low = f"≥ {_num(self.ge)}" if self.ge is not None else None
        low = f"> {_num(self.gt)}" if self.gt is not None else low
        high = (
            "≤ 2⁶³−1"
            if self.le == SEED_MAX
            else f"≤ {_num(self.le)}"
            if self.le is not None
            else None
        )
        return ", ".join(p for p in (low, high) if p) or "any"


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


@dataclass(frozen=True)
class Knob:
    """One sampling knob. ``names``: its field in each dialect that takes it (a dialect
    that does not is absent); ``also``: a second name a dialect takes for it (vLLM's
    ``repetition_penalty`` on the OpenAI side). ``range`` holds on every dialect but those
    of ``ranges``. ``default``: the engine's (llama-server's, the OpenAI side's);
    ``ollama_default``: Ollama's where it differs. ``remote``: its upstream names, sent
    when the request's value is not the default (``always``: every time, the upstream's
    own default being another); a knob with none is refused on a remote model when set.
    ``gguf``: its key under ``general.sampling.``."""

    name: str  # the SamplingParams field
    kind: type  # int or float
    default: Any
    range: Range
    names: Mapping[Dialect, str]
    ranges: Mapping[Dialect, Range] = field(default_factory=dict)
    also: Mapping[Dialect, str] = field(default_factory=dict)
    ollama_default: Any = None
    remote: tuple[str, ...] = ()
    always: bool = False
    gguf: str | None = None
    what: str = ""

    def bounds(self, dialect: Dialect) -> Range:
        return self.ranges.get(dialect, self.range)

    def pydantic_field(self, dialect: Dialect) -> tuple[Any, FieldInfo]:
        """The pydantic field of this knob in ``dialect``: optional, unset by default."""
        r = self.bounds(dialect)
        return (self.kind | None, Field(default=None, ge=r.ge, gt=r.gt, le=r.le))

    def checked(self, dialect: Dialect) -> Any:
        """Its type with ``dialect``'s bounds (for a ``TypeAdapter``)."""
        r = self.bounds(dialect)
        return Annotated[self.kind, Field(ge=r.ge, gt=r.gt, le=r.le)]

    @property
    def annotation(self) -> str:
        """Its type in SamplingParams (``seed`` is None: a random one per request)."""
        return f"{self.kind.__name__} | None" if self.default is None else self.kind.__name__

    @property
    def ollama_value(self) -> Any:
        return self.default if self.ollama_default is None else self.ollama_default


@dataclass(frozen=True)
class Missing:
    """A knob the engine does not implement: refused by name where a dialect has it,
    except at its neutral values (the ones that turn it off)."""

    names: tuple[Dialect, ...]
    name: str
    why: str
    neutral: tuple[Any, ...]


_OFF = Range(ge=0.0, le=1.0)
_PENALTY = Range(ge=-2.0, le=2.0)
_ALL: Mapping[Dialect, str] = {"openai": "", "ollama": "", "llamaserver": "", "defaults": ""}
_NO_DEFAULTS: Mapping[Dialect, str] = {"openai": "", "ollama": "", "llamaserver": ""}
# The int knobs without an upper bound of their own are held to 64 bits as --model-opt
# values and GGUF keys (whole numbers cross the worker socket as 64-bit integers).
_WHOLE = Range(ge=0, le=SEED_MAX)


def _named(name: str, dialects: Mapping[Dialect, str]) -> dict[Dialect, str]:
    return {d: n or name for d, n in dialects.items()}


KNOBS: tuple[Knob, ...] = (
    # OpenAI takes 0..2 and Anthropic 0..1 (their own bounds); Ollama and llama-server
    # take any, and Mullama up to 5 there: past that the distribution is flat noise.
    Knob("temperature", float, 0.8, Range(ge=0.0, le=2.0),
         _named("temperature", {**_ALL, "anthropic": ""}),
         ranges={"anthropic": Range(ge=0.0, le=1.0), "ollama": Range(ge=0.0, le=5.0),
                 "llamaserver": Range(ge=0.0, le=5.0)},
         remote=("temperature",), always=True, gguf="temp",
         what="0: greedy (the most likely token)"),
    # Ollama takes 0 (keep the most likely token), the others more than 0.
    Knob("top_p", float, 0.95, Range(gt=0.0, le=1.0), _named("top_p", {**_ALL, "anthropic": ""}),
         ranges={"ollama": Range(ge=0.0, le=1.0)}, ollama_default=0.9, remote=("top_p",),
         always=True, gguf="top_p", what="1: off"),
    Knob("top_k", int, 40, Range(ge=0), _named("top_k", {**_ALL, "anthropic": ""}),
         ranges={"defaults": _WHOLE}, remote=("top_k",), gguf="top_k",
         what="0: off; at or over the vocabulary: off"),
    Knob("min_p", float, 0.05, _OFF, _named("min_p", _ALL), ollama_default=0.0,
         remote=("min_p",), gguf="min_p", what="0: off"),
    # Locally typical sampling (llama.cpp's llama_sampler_init_typical).
    Knob("typical_p", float, 1.0, _OFF, _named("typical_p", _NO_DEFAULTS),
         remote=("typical_p",), what="1: off"),
    Knob("seed", int, None, Range(ge=SEED_MIN, le=SEED_MAX), _named("seed", _ALL),
         remote=("seed",), what="unset: a random one per request; llama.cpp uses its low 32 bits"),
    Knob("presence_penalty", float, 0.0, _PENALTY, _named("presence_penalty", _NO_DEFAULTS),
         remote=("presence_penalty",), what="0: off"),
    Knob("frequency_penalty", float, 0.0, _PENALTY, _named("frequency_penalty", _NO_DEFAULTS),
         remote=("frequency_penalty",), what="0: off"),
    Knob("repeat_penalty", float, 1.0, Range(gt=0.0, le=10.0), _named("repeat_penalty", _ALL),
         also={"openai": "repetition_penalty"}, ollama_default=1.1,
         remote=("repetition_penalty", "repeat_penalty"), gguf="penalty_repeat", what="1: off"),
    # No OpenAI field: the window of the penalties above (-1: the context).
    Knob("repeat_last_n", int, 64, Range(ge=-1),
         _named("repeat_last_n", {"ollama": "", "llamaserver": "", "defaults": ""}),
         ranges={"defaults": Range(ge=-1, le=SEED_MAX)}, remote=("repeat_last_n",),
         gguf="penalty_last_n", what="-1: the context size; clamped to it"),
)  # fmt: skip

MISSING: tuple[Missing, ...] = (
    Missing(("ollama", "llamaserver"), "mirostat", "mirostat sampling is not implemented", (0,)),
    Missing(("ollama",), "tfs_z", "tail-free sampling is not implemented", (1.0, 1)),
    Missing(("llamaserver",), "dry_multiplier", "DRY sampling is not implemented", (0.0, 0)),
    Missing(("llamaserver",), "xtc_probability", "XTC sampling is not implemented", (0.0, 0)),
)  # fmt: skip

BY_NAME: Mapping[str, Knob] = {k.name: k for k in KNOBS}


def of(dialect: Dialect) -> tuple[Knob, ...]:
    """The knobs ``dialect`` takes."""
    return tuple(k for k in KNOBS if dialect in k.names)


def fields(dialect: Dialect) -> dict[str, tuple[Any, FieldInfo]]:
    """The pydantic fields of ``dialect``'s knobs, by their names there (for
    ``pydantic.create_model``)."""
    out: dict[str, tuple[Any, FieldInfo]] = {}
    for k in of(dialect):
        out[k.names[dialect]] = k.pydantic_field(dialect)
        if dialect in k.also:
            out[k.also[dialect]] = k.pydantic_field(dialect)
    return out


def values(body: Any, dialect: Dialect) -> dict[str, Any]:
    """The knobs a request model of ``dialect`` sets (not None), by SamplingParams field;
    its own name wins over the second one."""
    out: dict[str, Any] = {}
    for k in of(dialect):
        value = getattr(body, k.names[dialect])
        if value is None and dialect in k.also:
            value = getattr(body, k.also[dialect])
        if value is not None:
            out[k.name] = value
    return out


def renames(dialect: Dialect) -> dict[str, str]:
    """``dialect``'s names that are not the SamplingParams field's -> the field."""
    return {k.names[dialect]: k.name for k in of(dialect) if k.names[dialect] != k.name}


def refused(dialect: Dialect) -> dict[str, str]:
    """The knobs ``dialect`` has that the engine does not implement -> why (a request
    model's ``REFUSED``)."""
    return {m.name: m.why for m in MISSING if dialect in m.names}


def neutral(dialect: Dialect) -> dict[str, tuple[Any, ...]]:
    """Their values that turn them off, accepted (a request model's ``NEUTRAL``)."""
    return {m.name: m.neutral for m in MISSING if dialect in m.names}


def ollama_defaults() -> dict[str, Any]:
    """Ollama's defaults of the knobs it has (its API starts there, not at the engine's)."""
    return {k.name: k.ollama_value for k in of("ollama")}


def declare(after: str) -> Any:
    """A class decorator, under ``@dataclass``: one field per knob, with its type and
    default, placed after the field ``after`` (SamplingParams)."""

    def add(cls: type) -> type:
        own = dict(cls.__dict__.get("__annotations__", {}))
        out: dict[str, Any] = {}
        for name, annotation in own.items():
            out[name] = annotation
            if name == after:
                out.update((k.name, k.annotation) for k in KNOBS)
        for k in KNOBS:
            setattr(cls, k.name, k.default)
        cls.__annotations__ = out
        return cls

    return add


_COLUMNS: tuple[tuple[Dialect, str], ...] = (
    ("openai", "OpenAI"), ("anthropic", "Anthropic"), ("ollama", "Ollama `options`, `parameters`"),
    ("llamaserver", "llama-server"), ("defaults", "`--model-opt`"),
)  # fmt: skip


def _cell(k: Knob, dialect: Dialect) -> str:
    if dialect not in k.names:
        return "—"
    names = "`" + "`, `".join(n for n in (k.names[dialect], k.also.get(dialect)) if n) + "`"
    if dialect in k.ranges:
        names += f" ({k.bounds(dialect).text()})"
    return names


def knobs_markdown() -> str:
    """The table of docs/API.md: each knob, its bounds, defaults and names."""
    head = ["knob", "type", "bounds", "default (Ollama's)"] + [t for _, t in _COLUMNS]
    head += ["remote engine", "GGUF `general.sampling.`"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for k in KNOBS:
        default = "random" if k.default is None else _num(k.default)
        if k.ollama_value != k.default:
            default += f" ({_num(k.ollama_value)})"
        row = [f"`{k.name}`", k.kind.__name__, f"{k.range.text()}; {k.what}", default]
        row += [_cell(k, d) for d, _ in _COLUMNS]
        remote = ", ".join(f"`{n}`" for n in k.remote) or "refused"
        row += [remote + (" (always sent)" if k.always else ""), f"`{k.gguf}`" if k.gguf else "—"]
        lines.append("| " + " | ".join(row) + " |")
    missing = ", ".join(f"`{m.name}`" for m in MISSING)
    lines.append("")
    lines.append(f"Not implemented, refused by name (except at the value that turns them off): "
                 f"{missing}.")  # fmt: skip
    return "\n".join(lines) + "\n"
