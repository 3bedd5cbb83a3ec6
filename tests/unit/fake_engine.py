"""A fake engine for the scheduler's unit tests: a batch, a context with a finite KV cache
(positions per sequence id, states as frozensets, logits rows on demand), a model whose
pieces are "<id>" and a sampler that plays a script of tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mullama.engine.detokenize import StopMatcher
from mullama.engine.kvcache import HostCache
from mullama.engine.scheduler import Scheduler
from mullama.engine.sequence import Sequence

EOG = 0


@dataclass
class FakeBatch:
    capacity: int
    rows: list[tuple[int, int, int, bool]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.rows)

    def clear(self):
        self.rows = []

    def add(self, token, pos, seq, logits):
        assert self.n < self.capacity
        self.rows.append((token, pos, seq, logits))
        return self.n - 1

    def add_many(self, tokens, start, seq, last_logits, all_logits=False):
        for k, t in enumerate(tokens):
            self.add(t, start + k, seq, all_logits or (last_logits and k == len(tokens) - 1))
        return self.n - 1


class FakeCtx:
    def __init__(self, kv_cells: int = 10_000):
        self.kv_cells = kv_cells
        self.kv: dict[int, set[int]] = {}
        self.batches: list[list[tuple[int, int, int, bool]]] = []
        self.copies: list[tuple[int, int]] = []
        self.restores: list[int] = []
        self.vocab = np.zeros(8, dtype=np.float32)  # every row's logits (logprob tests)

    def used(self):
        return sum(len(v) for v in self.kv.values())

    def decode(self, batch):
        if self.used() + batch.n > self.kv_cells:
            return 1
        self.batches.append(list(batch.rows))
        for _, pos, seq, _ in batch.rows:
            self.kv.setdefault(seq, set()).add(pos)
        return 0

    def seq_rm(self, seq, p0=-1, p1=-1):
        cells = self.kv.get(seq, set())
        self.kv[seq] = {p for p in cells if not (p >= max(p0, 0) and (p1 < 0 or p < p1))}
        return True

    def seq_cp_whole(self, src, dst):
        self.copies.append((src, dst))
        self.kv[dst] = set(self.kv.get(src, set()))

    def seq_pos_min(self, seq):
        return min(self.kv.get(seq) or {-1})

    def seq_pos_max(self, seq):
        return max(self.kv.get(seq) or {-1})

    def logits(self, row):
        return self.vocab

    def state_save(self, seq):
        cells = self.kv.get(seq, set())
        return (frozenset(cells), 100 * len(cells)) if cells else (None, 0)

    def state_restore(self, seq, data, size):
        self.restores.append(seq)
        self.kv[seq] = set(data)
        return True


class FakeModel:
    def is_eog(self, tok):
        return tok == EOG

    def piece(self, tok, special=False):
        return f"<{tok}>".encode()


class FakeSampler:
    done = False  # no constraint

    def __init__(self, tokens):
        self.tokens = list(tokens)

    def sample(self, ctx, row):
        return self.tokens.pop(0) if self.tokens else 7

    def close(self):
        pass


def make(n_slots=2, n_batch=8, kv=10_000, host_bytes=0, n_swa=0, streams=True, n_quick=None,
         preempt_after=0.0):  # fmt: skip
    ctx = FakeCtx(kv)
    sched = Scheduler(
        model=FakeModel(),
        ctx=ctx,
        batch=FakeBatch(n_batch),
        n_slots=n_slots,
        n_batch=n_batch,
        n_quick=n_quick,
        host_cache=HostCache(host_bytes),
        n_swa=n_swa,
        streams=streams,
        preempt_after=preempt_after,
    )
    return sched, ctx


def seq(sid, prompt, out=(), max_tokens=100, stops=(), scope=""):
    return Sequence(
        id=sid,
        tokens=list(prompt),
        n_prompt=len(prompt),
        max_tokens=max_tokens,
        sampler=FakeSampler(out),
        stops=StopMatcher(list(stops)),
        scope=scope,
    )
