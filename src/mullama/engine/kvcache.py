"""The host-RAM cache of sequence states: the KV cells of a conversation that had to leave
its slot, kept in RAM so that its next turn restores them into any slot instead of
computing its whole history again.

An entry is saved only when a slot is about to be overwritten with something else (never
on every request), keyed by the tokens it holds; entries live least recently used first
out within ``max_bytes``. An entry whose tokens are a prefix of a newer one's is dropped
(the newer one serves every request the older one could). Lookups compare token arrays
with numpy, so finding the best of hundreds of entries costs microseconds.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def as_tokens(tokens: list[int]) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int32)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """The length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


@dataclass(eq=False)
class Entry:
    tokens: np.ndarray  # the positions 0..len-1 the state holds
    data: Any  # the state's bytes (a ctypes buffer, as llama.cpp wrote it)
    size: int

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


@dataclass
class HostCacheStats:
    hits: int = 0  # restores that served a request
    misses: int = 0  # admissions the cache had nothing better for
    saves: int = 0
    evictions: int = 0
    failed_restores: int = 0  # a restore that did not hold what it should: dropped
    bytes: int = 0
    entries: int = 0
    save_seconds: list[float] = field(default_factory=list)  # drained by the worker
    restore_seconds: list[float] = field(default_factory=list)


class HostCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.stats = HostCacheStats()
        self._entries: OrderedDict[int, Entry] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def best(self, tokens: np.ndarray) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with ``tokens``, and that length."""
        best, best_n = None, 0
        for entry in self._entries.values():
            n = common_prefix(entry.tokens, tokens)
            if n > best_n:
                best, best_n = entry, n
        return best, best_n

    def holds(self, tokens: np.ndarray) -> bool:
        """Whether an entry already holds all of ``tokens`` (saving them again is waste)."""
        return any(
            e.n_tokens >= len(tokens) and common_prefix(e.tokens, tokens) == len(tokens)
            for e in self._entries.values()
        )

    def put(self, tokens: np.ndarray, data: Any, size: int) -> bool:
        if size > self.max_bytes or size <= 0:
            return False
        for key, e in list(self._entries.items()):  # a prefix of the new one: redundant
            if e.n_tokens <= len(tokens) and common_prefix(e.tokens, tokens) == e.n_tokens:
                self._remove(key)
        self._entries[id(data)] = Entry(tokens, data, size)
        self.stats.bytes += size
        self.stats.saves += 1
        while self.stats.bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))
            self.stats.evictions += 1
        self.stats.entries = len(self._entries)
        return True

    def touch(self, entry: Entry) -> None:
        self._entries.move_to_end(id(entry.data))

    def drop(self, entry: Entry) -> None:
        if id(entry.data) in self._entries:
            self._remove(id(entry.data))

    def _remove(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.stats.bytes -= entry.size
        self.stats.entries = len(self._entries)
