"""The host-RAM cache of sequence states: the KV cells of a conversation that had to leave
its slot, kept in RAM so that its next turn restores them into any slot instead of
computing its whole history again.

An entry is saved only when a slot is about to be overwritten with something else (never
on every request), keyed by the tokens it holds; entries live least recently used first
out within ``max_bytes``. An entry whose tokens are a prefix of a newer one's is dropped
(the newer one serves every request the older one could). Lookups compare token arrays
with numpy, so finding the best of hundreds of entries costs microseconds.

Every entry belongs to a cache scope (``GenerateRequest.cache_scope``: the caller's tenant
and cache_salt, "" when caches are shared): a lookup sees only the entries of its own
scope, so one tenant's prompt is never reused for, or confirmed to, another.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def state_buffer(size: int) -> ctypes.Array[ctypes.c_uint8]:
    """A buffer for one saved KV state, not zeroed first: every byte is written by
    llama.cpp (or read from a session file) before use. A zeroed ctypes array of a
    ~35 MB state (1,500 SmolLM2 tokens) took ~17 ms to make, the copy into it ~2 ms:
    made from numpy's uninitialised memory the save takes ~4 ms."""
    return (ctypes.c_uint8 * size).from_buffer(np.empty(size, dtype=np.uint8))


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
    data: Any  # the state's bytes (a ctypes buffer, as llama.cpp wrote it); None: on disk
    size: int
    loader: Callable[[], tuple[Any, int] | None] | None = None  # reads a state from disk
    path: Path | None = None  # the session file it came from
    scope: str = ""  # the cache scope of the requests that computed it

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
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # in RAM, LRU first
        self._disk: dict[int, Entry] = {}  # saved sessions (engine/sessions.py), unread

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def _all(self) -> Iterator[Entry]:
        yield from self._entries.values()
        yield from self._disk.values()

    def best(self, tokens: np.ndarray, scope: str = "") -> tuple[Entry | None, int]:
        """The entry of ``scope`` sharing the longest prefix with ``tokens``, and that
        length."""
        best, best_n = None, 0
        for entry in self._all():
            if entry.scope != scope:
                continue
            n = common_prefix(entry.tokens, tokens)
            if n > best_n:
                best, best_n = entry, n
        return best, best_n

    def holds(self, tokens: np.ndarray, scope: str = "") -> bool:
        """Whether an entry of ``scope`` already holds all of ``tokens`` (saving them
        again is waste)."""
        return any(
            e.scope == scope and e.n_tokens >= len(tokens)
            and common_prefix(e.tokens, tokens) == len(tokens)
            for e in self._all()
        )  # fmt: skip

    def put(self, tokens: np.ndarray, data: Any, size: int, scope: str = "") -> bool:
        if size > self.max_bytes or size <= 0:
            return False
        for e in list(self._all()):  # a prefix of the new one, in its scope: redundant
            if (e.scope == scope and e.n_tokens <= len(tokens)
                    and common_prefix(e.tokens, tokens) == e.n_tokens):  # fmt: skip
                self.drop(e)
        self._insert(Entry(tokens, data, size, scope=scope))
        self.stats.saves += 1
        return True

    def _insert(self, entry: Entry) -> None:
        self._entries[id(entry)] = entry
        self.stats.bytes += entry.size
        while self.stats.bytes > self.max_bytes and len(self._entries) > 1:
            self._remove(next(iter(self._entries)))
            self.stats.evictions += 1
        self.stats.entries = len(self._entries)

    def add_saved(self, entries: list[Entry]) -> None:
        """Sessions found on disk: restorable, read when first needed."""
        for e in entries:
            self._disk[id(e)] = e

    def materialize(self, entry: Entry) -> bool:
        """Make sure the entry's state is in RAM (a saved session is read and checked);
        False when it could not be: the entry is gone."""
        if entry.data is not None:
            return True
        self._disk.pop(id(entry), None)
        loaded = entry.loader() if entry.loader is not None else None
        if loaded is None:
            return False
        entry.data, entry.size = loaded
        self._insert(entry)
        return True

    def touch(self, entry: Entry) -> None:
        if id(entry) in self._entries:
            self._entries.move_to_end(id(entry))

    def drop(self, entry: Entry) -> None:
        if id(entry) in self._entries:
            self._remove(id(entry))
        else:
            self._disk.pop(id(entry), None)

    def hottest(self) -> list[Entry]:
        """Every entry, most recently used first (unread saved sessions last)."""
        return [*reversed(self._entries.values()), *self._disk.values()]

    def _remove(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.stats.bytes -= entry.size
        self.stats.entries = len(self._entries)
