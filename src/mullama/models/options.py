"""Per-model settings: ``--model-opt NAME:key=value`` (repeatable) over the global flags.

A value is checked by the very field definition of the global flag it overrides (its type
and bounds in config.py), so ``--model-opt m:context_size=8`` is refused exactly as
``--context-size 8`` is. The request defaults (``temperature``, ``top_k``, ...; as
llama-server's ``--temp``, ``--top-k``) have no global flag: they are checked by the bounds
the request fields of the same name have (``SAMPLING``)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from ..config import Settings
from ..engine import knobs
from ..errors import ClientError
from .adapters import Adapter, parse_adapter

# Filled from the global settings when a model does not set them (keep_alive and pinned
# have their own defaults: the daemon's keep-alive, pinned when given with --model).
_FROM_SETTINGS = (
    "context_size", "parallel", "threads", "batch_size", "gpu_layers", "max_tokens", "pooling",
)  # fmt: skip

# The request defaults a model may set (the knobs of engine/knobs.py's "defaults"
# dialect), with the bounds a request's own value has; a GGUF's general.sampling.* values
# are checked by the same (models/defaults.py).
SAMPLING: dict[str, Any] = {k.name: k.checked("defaults") for k in knobs.of("defaults")}


@dataclass(frozen=True)
class ModelOptions:
    """One model's settings; ``sampling``: its request defaults (under a request's own
    values, over the GGUF's general.sampling.*), read as attributes too (``.temperature``)."""

    context_size: int | None = None
    parallel: int | None = None
    threads: int | None = None
    batch_size: int | None = None
    gpu_layers: int | None = None
    keep_alive: str | None = None
    pinned: bool | None = None
    max_tokens: int | None = None  # the most tokens one answer may generate (0: no cap)
    pooling: str | None = None  # its embeddings' (None: the GGUF's, else mean)
    # A reasoning model's thinking (api/thinking.py ThinkDefaults), over a custom model's
    # parameters and the global flags: on or off, its budget (-1: none, 0: off), its format.
    think: bool | None = None
    reasoning_budget: int | None = None
    reasoning_format: str | None = None
    # LoRA adapters over the model (models/adapters.py); None: --lora's for the default
    # model, none for the others.
    lora: tuple[Adapter, ...] | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        if name in SAMPLING:
            return self.sampling.get(name)
        raise AttributeError(name)

    def with_defaults(self, settings: Any) -> ModelOptions:
        """Fill what this model does not set from the global settings."""
        values = {k: getattr(settings, k) for k in _FROM_SETTINGS if getattr(self, k) is None}
        return replace(self, **values)

    def with_lora(self, adapters: tuple[Adapter, ...]) -> ModelOptions:
        """These options with ``adapters`` (--lora, for the default model) unless the
        model names its own (--model-opt NAME:lora=...)."""
        return self if self.lora is not None else replace(self, lora=adapters)

    def request_defaults(self) -> dict[str, Any]:
        """The request defaults this model sets (SamplingParams fields)."""
        return dict(self.sampling)

    def thinking(self) -> dict[str, Any]:
        """The thinking defaults this model sets (ThinkDefaults.layered's names)."""
        return {"think": self.think, "reasoning_budget": self.reasoning_budget,
                "reasoning_format": self.reasoning_format}  # fmt: skip


KEYS = (*(f.name for f in fields(ModelOptions) if f.name != "sampling"), *SAMPLING)


@functools.cache
def _validator(key: str) -> TypeAdapter[Any]:
    if key in ("pinned", "think"):  # per model only: whether it stays loaded, thinks
        return TypeAdapter(bool)
    if key in SAMPLING:
        return TypeAdapter(SAMPLING[key])
    info = Settings.model_fields[key]
    if not info.metadata:
        return TypeAdapter(info.annotation)
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)])  # type: ignore[arg-type]


def parse_model_opts(items: list[str]) -> dict[str, ModelOptions]:
    """``["big:context_size=8192", "big:pinned=true"]`` → {"big": ModelOptions(...)}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if ":lora=" in item:  # NAME:lora=PATH[:scale], repeatable: each adds an adapter
            name, _, raw = item.partition(":lora=")
            if not name.strip():
                raise ClientError(f"--model-opt {item!r}: expected NAME:lora=PATH[:scale]")
            own = out.setdefault(name.strip(), {})
            own["lora"] = (*own.get("lora", ()), parse_adapter(raw, "--model-opt lora"))
            continue
        name, sep, rest = item.rpartition(":")
        key, eq, raw = rest.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not eq or not name:
            raise ClientError(f"--model-opt {item!r}: expected NAME:key=value")
        if key not in KEYS:
            raise ClientError(
                f"--model-opt {item!r}: unknown key {key!r} (one of {', '.join(KEYS)})"
            )
        try:
            value = _validator(key).validate_python(raw.strip())
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise ClientError(f"--model-opt {item!r}: {key}: {msg}") from None
        out.setdefault(name.strip(), {})[key] = value
    return {name: _options(vals) for name, vals in out.items()}


def _options(values: dict[str, Any]) -> ModelOptions:
    sampling = {k: v for k, v in values.items() if k in SAMPLING}
    own = {k: v for k, v in values.items() if k not in SAMPLING}
    return ModelOptions(**own, sampling=sampling)


def parse_aliases(items: list[str]) -> dict[str, str]:
    """``--model-alias NAME=MODEL`` values as a map; a malformed one, or an alias of an
    alias, is a configuration error."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, model = (part.strip() for part in item.partition("="))
        if not sep or not name or not model:
            raise ClientError(f"--model-alias {item!r}: expected NAME=MODEL")
        out[name] = model
    for name, model in out.items():
        if model in out:
            raise ClientError(f"--model-alias {name}={model}: {model!r} is itself an alias")
    return out


def parse_fallbacks(items: list[str]) -> dict[str, str]:
    """``--fallback PRIMARY=BACKUP`` values as a map; a malformed one, a model given two
    backups, or a cycle (A=B, B=A) is a configuration error."""
    out: dict[str, str] = {}
    for item in items:
        primary, sep, backup = (part.strip() for part in item.partition("="))
        if not sep or not primary or not backup:
            raise ClientError(f"--fallback {item!r}: expected PRIMARY=BACKUP")
        if primary in out and out[primary] != backup:
            raise ClientError(
                f"--fallback {item!r}: {primary!r} already falls back to {out[primary]!r} "
                "(one backup per model; chain them: A=B, B=C)"
            )
        out[primary] = backup
    for start in out:
        chain, name = [start], out[start]
        while name in out and name not in chain:
            chain.append(name)
            name = out[name]
        if name in chain:
            raise ClientError(f"--fallback: a cycle ({' -> '.join([*chain, name])})")
    return out
