"""Memory estimates for a model before it is loaded, the budget they must fit in, and
keep-alive durations."""

from __future__ import annotations

import math
import os
import re

from ..errors import ClientError
from .gguf import GGUFInfo

_MiB = 1024 * 1024


def total_memory() -> int:
    """Physical memory, from the cgroup limit when there is one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            raw = f.read().strip()
        if raw.isdigit():
            limit = int(raw)
            return min(limit, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.I)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}


def parse_budget(value: str, total: int | None = None) -> int:
    """'80%', '6GiB', '6G', '6442450944' → bytes."""
    value = str(value).strip()
    if value.endswith("%"):
        pct = float(value[:-1])
        if not 0 < pct <= 100:
            raise ClientError(f"memory budget {value!r} must be between 0% and 100%")
        return int((total or total_memory()) * pct / 100)
    m = _SIZE.match(value)
    if not m:
        raise ClientError(f"memory budget {value!r} is not a size (e.g. 80%, 6GiB, 6000000000)")
    unit = (m.group(2) or "").lower().rstrip("b")
    return int(float(m.group(1)) * _UNITS[unit])


def estimate_bytes(info: GGUFInfo, context_total: int, batch: int, attention_span: int = 0) -> int:
    """File size + f16 KV cache for every slot + compute buffers (logits and activations
    for one micro-batch), a bit above what llama.cpp allocates on the CPU.
    ``attention_span``: without flash attention, the KV cells one micro-batch's attention
    scores span (a sequence's stream, or the whole unified pool); their f32 score matrix
    shares the compute buffer with the logits (measured: SmolLM2, 4 x 8,192 tokens, 166 MiB
    without flash attention, 98 MiB with it)."""
    n_layer = int(info.arch_key("block_count", 0) or 0)
    n_embd = int(info.arch_key("embedding_length", 0) or 0)
    n_head = int(info.arch_key("attention.head_count", 1) or 1)
    n_head_kv = info.arch_key("attention.head_count_kv", n_head)
    if isinstance(n_head_kv, list):  # per-layer counts in some architectures
        n_head_kv = max(n_head_kv) if n_head_kv else n_head
    head_dim = n_embd // max(n_head, 1)
    k_len = int(info.arch_key("attention.key_length", head_dim) or head_dim)
    v_len = int(info.arch_key("attention.value_length", head_dim) or head_dim)
    kv = context_total * n_layer * int(n_head_kv) * (k_len + v_len) * 2
    n_vocab = int(info.arch_key("vocab_size", 0) or 0) or 32000
    ubatch = min(batch, 512)
    scores = attention_span * n_head
    compute = ubatch * (max(n_vocab, scores) * 4 + n_embd * 4 * 16) + 32 * _MiB
    return info.file_size + kv + compute


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(h|ms|m|s)")


# Longer than this is forever: an expiry must stay a date (datetime ends in year 9999;
# /api/ps answered 500 for every request after one keep_alive of 1e300).
FOREVER = 100 * 365 * 86400.0


def parse_keep_alive(value: str | int | float | None) -> float | None:
    """Ollama's keep_alive: a number of seconds or a Go duration ("5m", "1h30m", "10s");
    0 = unload right after the request; negative (or longer than a century) = keep
    forever (returns None)."""
    if value is None:
        raise ClientError("keep_alive is empty", param="keep_alive")
    if isinstance(value, bool):
        raise ClientError("keep_alive must be a duration or a number", param="keep_alive")
    if isinstance(value, int | float):
        seconds = float(value) if abs(value) < 1e300 else (math.inf if value > 0 else -math.inf)
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(a + b for a, b in parts) != text.replace(" ", ""):
                raise ClientError(
                    f"invalid keep_alive {value!r}: use seconds or a duration like 5m, 1h, 30s",
                    param="keep_alive",
                ) from None
            scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
            seconds = sum(float(n) * scale[u] for n, u in parts)
    if math.isnan(seconds):
        raise ClientError(f"invalid keep_alive {value!r}: not a number", param="keep_alive")
    return None if seconds < 0 or seconds > FOREVER else seconds
