"""Per-model settings: ``--model-opt NAME:key=value`` (repeatable) over the global flags."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ..errors import ClientError

_INT_KEYS = ("context_size", "parallel", "threads", "batch_size", "gpu_layers")


@dataclass(frozen=True)
class ModelOptions:
    context_size: int | None = None
    parallel: int | None = None
    threads: int | None = None
    batch_size: int | None = None
    gpu_layers: int | None = None
    keep_alive: str | None = None
    pinned: bool | None = None

    def with_defaults(self, settings: Any) -> ModelOptions:
        """Fill what this model does not set from the global settings."""
        values = {k: getattr(settings, k) for k in _INT_KEYS if getattr(self, k) is None}
        return replace(self, **values)


KEYS = tuple(f.name for f in fields(ModelOptions))


def parse_model_opts(items: list[str]) -> dict[str, ModelOptions]:
    """``["big:context_size=8192", "big:pinned=true"]`` → {"big": ModelOptions(...)}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, rest = item.rpartition(":")
        key, eq, raw = rest.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not eq or not name:
            raise ClientError(f"--model-opt {item!r}: expected NAME:key=value")
        if key not in KEYS:
            raise ClientError(
                f"--model-opt {item!r}: unknown key {key!r} (one of {', '.join(KEYS)})"
            )
        value: Any = raw.strip()
        if key in _INT_KEYS:
            try:
                value = int(value)
            except ValueError:
                raise ClientError(f"--model-opt {item!r}: {key} must be an integer") from None
            if value < (0 if key in ("threads",) else -1 if key == "gpu_layers" else 1):
                raise ClientError(f"--model-opt {item!r}: {key} is out of range")
        elif key == "pinned":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ClientError(f"--model-opt {item!r}: pinned must be true or false")
            value = value.lower() in ("true", "1", "yes")
        out.setdefault(name.strip(), {})[key] = value
    return {name: ModelOptions(**vals) for name, vals in out.items()}
