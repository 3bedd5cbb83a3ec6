"""A model's own request defaults: the ``general.sampling.*`` keys of its GGUF.

Model authors write their recommended sampling settings there (llama.cpp's converter takes
them from ``generation_config.json``), and llama.cpp's ``common/`` applies them as defaults
under the command line's own flags. Mullama applies them as the model's request defaults,
under ``--model-opt`` and a request's own values (api/profiles.py). Only the knobs Mullama
implements are read; ``sequence``, ``xtc_*`` and ``mirostat*`` are not (llama-server
also ignores the first two whenever its own samplers are set).

A value is checked by the bounds the request field of the same name has
(models/options.py): a file is not trusted to be sane, and a value out of bounds is left
out, as if the key were absent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..engine import knobs
from .options import SAMPLING

log = logging.getLogger(__name__)

PREFIX = "general.sampling."
# GGUF key (after the prefix) -> SamplingParams field (engine/knobs.py).
KEYS = {k.gguf: k.name for k in knobs.KNOBS if k.gguf}
_WHOLE = {k.name for k in knobs.KNOBS if k.kind is int}
_CHECK = {key: TypeAdapter(SAMPLING[name]) for key, name in KEYS.items()}


def gguf_sampling(metadata: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """The request defaults the GGUF's metadata sets: field -> (value, GGUF key)."""
    out: dict[str, tuple[Any, str]] = {}
    for key, name in KEYS.items():
        full = PREFIX + key
        raw = metadata.get(full)
        if raw is None:
            continue
        value = _number(raw, whole=name in _WHOLE)
        if value is None:
            log.warning("ignoring %s = %.40r: not a %s", full, raw,
                        "whole number" if name in _WHOLE else "number")  # fmt: skip
            continue
        try:
            out[name] = (_CHECK[key].validate_python(value), full)
        except ValidationError as exc:
            log.warning("ignoring %s = %r: %s", full, value, exc.errors()[0]["msg"])
    return out


def _number(raw: Any, whole: bool) -> int | float | None:
    """A metadata value as a number: llama.cpp reads these keys as text and parses them,
    so a numeric string counts too; NaN and infinities do not."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            return None
    if not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    if whole:
        return int(raw) if raw == int(raw) else None
    return float(f"{raw:.7g}")  # a float32 as written (0.7, not 0.699999988)
