"""LoRA adapters a local model is served with (``--lora PATH[:scale]``, llama-server's
``--lora``/``--lora-scaled``, ``--model-opt NAME:lora=PATH[:scale]``).

A model with adapters is another model: its identity (what saved sessions and the
response cache key on) folds in each adapter's file and scale, so it never shares KV
states or cached answers with its base. The engine loads each adapter once, when the
model loads, and applies it to every context of the model (engine/llama.py)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import ClientError


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter file and the scale it is applied with (llama.cpp's: the delta
    is multiplied by ``scale * alpha / rank``; 0 leaves the base model as it is)."""

    path: str
    scale: float = 1.0

    @property
    def size(self) -> int:
        return Path(self.path).stat().st_size

    def describe(self) -> dict[str, Any]:
        """As /api/ps and /v1/models show it (its file name, not where it lies)."""
        return {"name": Path(self.path).stem, "scale": self.scale}


def adapter(path: str, scale: float, where: str) -> Adapter:
    """An adapter for ``path``; a missing file or a scale that is no finite number is
    a configuration error naming ``where`` (the flag as given)."""
    if not math.isfinite(scale):
        raise ClientError(f"{where}: the scale must be a finite number")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ClientError(f"{where}: no adapter file {path!r}")
    return Adapter(str(file.resolve()), float(scale))


def parse_adapter(value: str, where: str) -> Adapter:
    """``PATH`` or ``PATH:SCALE`` (the scale 1 when left out; a path may hold ':')."""
    text = value.strip()
    path, sep, tail = text.rpartition(":")
    try:
        scale = float(tail) if sep else 1.0
    except ValueError:
        sep = ""
    return adapter(path if sep else text, scale if sep else 1.0, f"{where} {value!r}")


def parse_adapters(items: Sequence[str], where: str = "--lora") -> tuple[Adapter, ...]:
    return tuple(parse_adapter(item, where) for item in items)


def identity(base: str, adapters: Sequence[Adapter]) -> str:
    """``base`` (the model file's identity) for a model without adapters; with them, a
    digest of it and each adapter's file (path, size, modification time) and scale."""
    if not adapters:
        return base
    parts: list[Any] = [base]
    for a in adapters:
        stat = Path(a.path).stat()
        parts.append([a.path, stat.st_size, stat.st_mtime_ns, a.scale])
    return "lora:" + hashlib.sha256(orjson.dumps(parts)).hexdigest()


def wire(adapters: Sequence[Adapter]) -> list[tuple[str, float]]:
    """As the worker takes them (WorkerSpec.lora)."""
    return [(a.path, a.scale) for a in adapters]


def card(adapters: Sequence[Adapter] | None) -> dict[str, Any]:
    """The ``adapters`` field /api/ps and /v1/models add for a model with adapters."""
    return {"adapters": [a.describe() for a in adapters]} if adapters else {}
