"""Slot placement and the KV cache: which slot a sequence gets and how much of its prompt
is already in KV there, from the best of an idle slot's history (cut back to the shared
prefix), a copy of another slot's (idle or running), or a state saved in host RAM
(engine/kvcache.py). Also what leaves a slot: histories saved before they are overwritten,
running sequences moved to close gaps in the slot ids, answers parked in RAM.

Every prefix is matched within its cache scope only (``shared``). No llama.cpp types: the
context is anything with ``seq_rm``, ``seq_cp_whole``, ``seq_pos_min/max`` and
``state_save/restore`` (engine/llama.py's Context, or a unit test's fake).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .kvcache import Entry, HostCache, as_tokens
from .sequence import Sequence, Slot, shared

log = logging.getLogger(__name__)

# A saved state is worth restoring when it spares this many more tokens than the best slot
# (a restore costs about what computing a few tokens does), and a slot's history is worth
# saving before it is overwritten when at least this many of its tokens would be lost.
MIN_GAIN = 16
MIN_SAVE = 64

# A running sequence is moved to close a gap in the slot ids only when it has at least
# this many tokens left to generate (a move copies its whole KV stream once; the gap
# costs a graph computation more on every step it lasts).
MIN_MOVE = 16


class KVSlots:
    """The context's KV streams (one slot per sequence id) and the host-RAM cache."""

    def __init__(
        self,
        ctx: Any,
        n_slots: int,
        host_cache: HostCache | None = None,
        n_swa: int = 0,
        recurrent: bool = False,
        streams: bool = True,
    ) -> None:
        self.ctx = ctx
        self.slots = [Slot(i) for i in range(n_slots)]
        # Sliding-window models keep only the window (unless the cache is full-size):
        # a prefix is reused only when its window is still there. Recurrent and hybrid
        # memories cannot be cut back: no prefix copies and no saved states for them.
        self.n_swa = n_swa
        self.recurrent = recurrent
        self.host = host_cache if host_cache is not None and not recurrent else HostCache(0)
        # One KV stream per sequence (not unified): llama.cpp cuts each batch into
        # micro-batches of consecutive sequence ids, so running sequences are kept on
        # consecutive slots (moved by a whole-stream copy, which those memories allow).
        self.compacts = streams and not recurrent and not n_swa
        # A new sequence may copy a prefix from a running one (computed, or computed by it
        # first): not for memories that cannot be cut back or keep only a window.
        self.follow = not recurrent and not n_swa
        self.moves = 0  # sequences moved to close a gap

    def used(self) -> int:
        """KV cells in use: running sequences' computed tokens and idle histories."""
        used = sum(s.seq.n_past for s in self.slots if s.seq is not None)
        return used + sum(len(s.cached) for s in self.slots if s.seq is None)

    def free(self, sources: set[int]) -> list[Slot]:
        """The slots a sequence may take now (none whose KV a pending copy reads)."""
        return [s for s in self.slots if s.seq is None and s.index not in sources]

    def occupy(self, slot: Slot, seq: Sequence) -> None:
        slot.cached = []
        slot.seq, slot.scope = seq, seq.scope
        seq.slot = slot.index

    def costs(self, free: list[Slot], running: list[Sequence]) -> Callable[[Sequence], int]:
        """What a waiting sequence has to compute: its tokens less the longest prefix of
        them that a free slot, a running sequence or the RAM cache holds."""
        held = [(s.tokens(), s.scope) for s in free if s.cached]
        if self.follow:
            held += [(as_tokens(r.tokens), r.scope) for r in running if r.follows is None]

        def cost(seq: Sequence) -> int:
            tokens = as_tokens(seq.tokens)
            found = max((shared(seq.scope, h, hs, tokens) for h, hs in held), default=0)
            if self.host.enabled:
                found = max(found, self.host.best(tokens, seq.scope)[1])
            return len(seq.tokens) - found

        return cost

    # ---- placement ---------------------------------------------------------------

    def place(
        self, seq: Sequence, free: list[Slot], sources: set[int], running: list[Sequence]
    ) -> tuple[Slot, int]:
        """The slot for ``seq`` and how many of its tokens are already in that slot's KV
        cache, from the best of: the idle slot sharing the longest prefix (cut back to
        it), a copy of that prefix into a cheaper slot (when the sharing slot holds a
        longer history of its own), or a state saved in host RAM. A slot copied from
        is added to ``sources`` (its data moves at the next decode)."""
        # A full hit must still decode the last prompt token to get logits; a sequence
        # scoring its prompt needs every prompt token's logits: nothing reused.
        limit = 0 if seq.score_prompt else len(seq.tokens) - 1
        tokens = as_tokens(seq.tokens)
        scope = seq.scope
        found = {s.index: min(shared(scope, s.tokens(), s.scope, tokens), limit) for s in free}
        src = max(free, key=lambda s: (found[s.index], -s.index))
        best = found[src.index]
        entry, saved = self.host.best(tokens, scope) if self.host.enabled and limit else (None, 0)
        saved = min(saved, limit)
        lead, led = self._leader(tokens, scope, limit, running)
        if lead is not None and led >= max(best, saved) + MIN_SAVE:
            # A running sequence has (or is computing) a longer prefix of this prompt
            # than any idle slot or saved state: copy it rather than compute it again
            # (a burst of conversations sharing a long system prompt computes it once).
            target = self._victim(free)
            self._evict(target, 0)
            self.keep(target, 0)
            done = min(led, lead.n_past)  # what the leader has computed so far
            if led - done >= MIN_SAVE or done <= max(best, saved):
                seq.follows = (lead, led)  # worth waiting a step or more for
                return target, 0
            self.ctx.seq_cp_whole(lead.slot, target.index)
            return target, self.keep(target, done)
        if entry is not None and saved >= best + MIN_GAIN:
            target = self._victim(free)
            self._evict(target, 0)
            return target, self._restore(target, entry, saved)
        if entry is None and self.host.enabled and limit:
            self.host.stats.misses += 1
        loses = len(src.cached) - best  # tokens of src's own history a cut would lose
        others = [s for s in free if s is not src]
        if best and loses >= MIN_SAVE and others and not self.recurrent and not self.n_swa:
            target = self._victim(others)
            if not target.cached or target.last_used < src.last_used:
                self._evict(target, 0)
                self.ctx.seq_cp_whole(src.index, target.index)
                sources.add(src.index)
                return target, self.keep(target, best)
        target = src if best else self._victim(free)
        self._evict(target, best)
        return target, self.keep(target, best)

    def _leader(
        self, tokens: np.ndarray, scope: str, limit: int, running: list[Sequence]
    ) -> tuple[Sequence | None, int]:
        """The running sequence of ``scope`` whose tokens (computed or still to compute)
        share the longest prefix with ``tokens``, and that length (at most ``limit``)."""
        if not self.follow or not limit:
            return None, 0
        best: tuple[Sequence | None, int] = (None, 0)
        for run in running:
            if run.follows is None and run.slot >= 0:
                n = min(shared(scope, as_tokens(run.tokens), run.scope, tokens), limit)
                if n > best[1]:
                    best = (run, n)
        return best

    def join(self, seq: Sequence, lead: Sequence, length: int) -> None:
        """``seq`` copies the first ``length`` tokens its leader has computed."""
        self.ctx.seq_cp_whole(lead.slot, seq.slot)
        seq.n_past = self.keep(self.slots[seq.slot], length)
        log.debug("sequence %s copied %d prompt tokens from %s", seq.id, length, lead.id)

    def _victim(self, slots: list[Slot]) -> Slot:
        """The slot whose history costs least to lose: an empty one, else the least
        recently used (the shorter history on a tie)."""
        return min(slots, key=lambda s: (bool(s.cached), s.last_used, len(s.cached), s.index))

    # ---- what leaves a slot ----------------------------------------------------------

    def compact(self, running: list[Sequence], sources: set[int]) -> None:
        """Close gaps in the running sequences' slot ids (slots 0, 1 and 3 running take
        two graph computations a step; 0, 1 and 2 take one): the sequence on the highest
        slot moves into the lowest gap whose idle history is not lost by it (empty, short,
        or saved to RAM first). Its KV stream is copied whole at the next decode, and the
        slot it leaves is emptied (its cells would only repeat the moved sequence's)."""
        if not self.compacts:
            return
        while len(running) > 1:
            ids = sorted(s.slot for s in running)
            if ids[-1] - ids[0] + 1 == len(ids):
                return
            src = self.slots[ids[-1]]
            seq = src.seq
            if src.index in sources:
                return  # a copy into or out of it is pending
            gaps = [
                s for s in self.slots[ids[0] : ids[-1]]
                if s.seq is None and s.index not in sources
                and (self.host.enabled or len(s.cached) < MIN_SAVE)
            ]  # fmt: skip
            if seq is None or not gaps or seq.max_tokens - seq.n_generated < MIN_MOVE:
                return
            dst = gaps[0]
            self._evict(dst, 0)
            if seq.n_past:
                self.ctx.seq_cp_whole(src.index, dst.index)
            else:
                self.ctx.seq_rm(dst.index, -1, -1)
            self.ctx.seq_rm(src.index, -1, -1)
            dst.seq, dst.cached, dst.scope = seq, [], seq.scope
            src.seq, src.cached = None, []
            seq.slot = dst.index
            self.moves += 1
            log.debug("sequence %s moved from slot %d to %d", seq.id, src.index, dst.index)

    def park(self, victim: Sequence, seq: Sequence) -> Slot | None:
        """Preemption: ``victim``'s KV into host RAM and its slot freed for ``seq``,
        keeping the history there (the same bytes it resumes from). None when RAM has no
        room for it: it goes on."""
        slot = self.slots[victim.slot]
        history = victim.tokens[: victim.n_past]
        mine, _ = self.host.best(as_tokens(seq.tokens), seq.scope)
        if mine is not None:
            self.host.touch(mine)  # the request's own history is not what the save evicts
        if not self.save(slot, as_tokens(history)):
            return None
        slot.seq, slot.cached, slot.last_used = None, history, time.monotonic()
        victim.slot, victim.n_past = -1, 0
        return slot

    def drop_idle(self) -> bool:
        """No room in KV: the idle slots' histories go. False when there were none."""
        idle = [s for s in self.slots if s.seq is None and s.cached]
        for slot in idle:
            self.ctx.seq_rm(slot.index, -1, -1)
            slot.cached = []
        return bool(idle)

    def vacate(self, seq: Sequence) -> None:
        """``seq`` leaves its slot with nothing kept (it is computed again from the start)."""
        slot = self.slots[seq.slot]
        self.ctx.seq_rm(slot.index, -1, -1)
        slot.seq = None
        slot.cached = []
        seq.slot = -1
        seq.n_past = 0

    def release(self, seq: Sequence, keep_cache: bool) -> None:
        """``seq`` ended: its slot keeps its computed tokens as an idle history (or
        nothing, ``keep_cache`` False)."""
        slot = self.slots[seq.slot]
        slot.seq = None
        slot.last_used = time.monotonic()
        if keep_cache:
            slot.cached = seq.tokens[: seq.n_past]
        else:
            self.ctx.seq_rm(slot.index, -1, -1)
            slot.cached = []
        seq.slot = -1

    def _evict(self, slot: Slot, keep: int) -> None:
        """Before ``slot`` keeps only its first ``keep`` tokens: save its history to host
        RAM when that loses enough of it (and RAM does not hold it already)."""
        if not self.host.enabled or len(slot.cached) - keep < MIN_SAVE:
            return
        self.save(slot, slot.tokens())

    def save(self, slot: Slot, tokens: np.ndarray) -> bool:
        """``slot``'s KV (holding ``tokens``) into host RAM, in the slot's cache scope,
        unless RAM holds it already; False when it does not fit."""
        if self.host.holds(tokens, slot.scope):
            return True
        started = time.perf_counter()
        data, size = self.ctx.state_save(slot.index)
        if data is None or not self.host.put(tokens, data, size, slot.scope):
            return False
        self.host.stats.save_seconds.append(time.perf_counter() - started)
        return True

    def keep(self, slot: Slot, keep: int) -> int:
        """Cut ``slot``'s KV back to its first ``keep`` positions; returns what it keeps
        (0 when the model's memory cannot be cut there: it is then recomputed)."""
        if keep and self.n_swa:
            # The token at position ``keep`` attends to (keep - n_swa, keep): those must
            # still be there (a window-sized cache, or a restored state, keeps only the
            # last n_swa positions; llama.cpp's mask: p0 is out when p1 - p0 >= n_swa).
            lowest = self.ctx.seq_pos_min(slot.index)
            if lowest > max(0, keep - self.n_swa + 1):
                log.info(
                    "slot %d cannot reuse its first %d tokens: the sliding window before "
                    "them is gone (the cache keeps positions from %d); recomputing",
                    slot.index, keep, lowest,
                )  # fmt: skip
                keep = 0
        if keep == 0 or not self.ctx.seq_rm(slot.index, keep, -1):
            self.ctx.seq_rm(slot.index, -1, -1)
            return 0
        return keep

    def _restore(self, slot: Slot, entry: Entry, keep: int) -> int:
        """Put a saved state into ``slot`` and cut it back to ``keep``; the sequence must
        hold exactly the entry's positions afterwards, or the entry is dropped and the
        prompt recomputed."""
        started = time.perf_counter()
        self.ctx.seq_rm(slot.index, -1, -1)
        if not self.host.materialize(entry):  # a saved session that could not be read
            self.host.stats.failed_restores += 1
            return 0
        ok = self.ctx.state_restore(slot.index, entry.data, entry.size)
        # A sliding-window model's state holds its last window of positions only.
        lowest = max(0, entry.n_tokens - self.n_swa) if self.n_swa else 0
        if not (ok and 0 <= self.ctx.seq_pos_min(slot.index) <= lowest
                and self.ctx.seq_pos_max(slot.index) == entry.n_tokens - 1):  # fmt: skip
            log.warning("a saved KV state did not restore as expected: dropped, recomputing")
            self.host.drop(entry)
            self.host.stats.failed_restores += 1
            self.ctx.seq_rm(slot.index, -1, -1)
            return 0
        self.host.touch(entry)
        self.host.stats.hits += 1
        kept = self.keep(slot, keep)
        self.host.stats.restore_seconds.append(time.perf_counter() - started)
        return kept
