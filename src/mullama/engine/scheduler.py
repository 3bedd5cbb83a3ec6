"""Continuous batching: slots, FIFO admission, one llama_batch per step, prefix reuse.

Every sequence is just a list of tokens and a count of how many are already in the KV
cache. Each step puts, for every running sequence, the tokens it still needs into ONE
batch: one token for sequences that are generating, a chunk of the prompt for sequences
that are prefilling, until the batch budget (n_batch) is spent. There is no separate
prefill mode: a new request joins at the next step.

Prefix reuse (idle slots, running sequences, the host-RAM cache and saved sessions) is
scoped: every sequence, slot history and saved state carries its requests' cache scope,
and a prompt matches only histories of its own scope (``_shared``).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .detokenize import IncrementalText, StopMatcher
from .kvcache import HostCache, as_tokens, common_prefix

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

# Admission among the first ADMIT_WINDOW waiting sequences is highest response ratio next:
# (time waited + service) / service, the service being the tokens left to compute at the
# measured prompt rate, plus one step (STEP_SECONDS, also added to every wait). Among
# sequences that have waited alike the shortest goes first (a warm turn that computes a
# few dozen tokens before a new 1,000-token prompt); a long one's ratio grows as it waits,
# so none starves. At 300 prompt tokens/s, a 1,000-token prompt that has waited 10 s goes
# before a 30-token turn that has waited less than ~0.6 s.
ADMIT_WINDOW = 32
STEP_SECONDS = 0.05

# Prompt tokens per step of a sequence scoring its prompt: each row keeps a vocabulary of
# logits (64 x 49k floats = 12 MB for SmolLM2), so a long prompt is scored in chunks.
SCORE_CHUNK = 64


@dataclass(eq=False)
class Sequence:
    id: str
    tokens: list[int]
    n_prompt: int
    max_tokens: int
    sampler: Any
    stops: StopMatcher
    ignore_eos: bool = False
    ctx_limit: int = 1 << 30
    top_logprobs: int | None = None  # None: no logprobs; else alternatives per token
    score_prompt: bool = False  # also the prompt's tokens' logprobs (echo scoring)
    shown: frozenset[int] = frozenset()  # special tokens written as text (call markers)
    prompt_entries: list[Any] = field(default_factory=list)  # sent with the first output
    text: IncrementalText = field(default_factory=IncrementalText)
    n_past: int = 0
    n_generated: int = 0
    slot: int = -1
    order: int = 0
    cancelled: bool = False
    finish: str | None = None
    submitted_at: float = 0.0  # time.monotonic() when queued
    admitted_at: float | None = None  # first time it got a slot
    reused: int = 0  # prompt tokens found in the KV cache at its first admission
    # Admitted while another running sequence computes a prefix they share: this one
    # computes nothing until the leader has that prefix, then copies it (leader, length).
    follows: tuple[Sequence, int] | None = None
    reported: bool = False  # its first admission went out (queue wait, tokens reused)
    # Preempted while generating so that a short request could start: its KV is in host
    # RAM and it waits at the head of the queue to resume from it (at most once).
    parked: bool = False
    preempted: bool = False
    scope: str = ""  # its cache scope: it reuses and leaves KV for this scope only

    @property
    def remaining(self) -> int:
        return len(self.tokens) - self.n_past


# One generated token's log probability, as it crosses the socket: the token (its text,
# or its bytes as a list of ints when they are not whole UTF-8), its logprob, and the most
# likely alternatives as [token, logprob] pairs, best first.
LogprobEntry = list[Any]


@dataclass
class Output:
    id: str
    text: str
    n_generated: int
    n_prompt: int
    finish: str | None
    logprobs: list[LogprobEntry] | None = None
    stop: str | None = None  # the stop string that ended it (finish "stop")


@dataclass
class Slot:
    index: int
    seq: Sequence | None = None
    cached: list[int] = field(default_factory=list)  # tokens in KV of an idle slot
    last_used: float = 0.0  # time.monotonic() its last sequence ended
    scope: str = ""  # the cache scope of its sequence, or of its idle history

    def tokens(self) -> np.ndarray:
        return as_tokens(self.cached)


def _shared(scope: str, held: np.ndarray, held_scope: str, tokens: np.ndarray) -> int:
    """The prefix of ``tokens`` (a request of ``scope``) that ``held`` (KV of
    ``held_scope``) can give it: none across scopes."""
    return common_prefix(held, tokens) if scope == held_scope else 0


class Scheduler:
    def __init__(
        self,
        *,
        model: Any,
        ctx: Any,
        batch: Any,
        n_slots: int,
        n_batch: int,
        n_quick: int | None = None,
        host_cache: HostCache | None = None,
        n_swa: int = 0,
        recurrent: bool = False,
        streams: bool = True,
        preempt_after: float = 0.0,
    ) -> None:
        self.model = model
        self.ctx = ctx
        self.batch = batch
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
        self.compact = streams and not recurrent and not n_swa
        # A new sequence may copy a prefix from a running one (computed, or computed by it
        # first): not for memories that cannot be cut back or keep only a window.
        self.follow = not recurrent and not n_swa
        self.moves = 0  # sequences moved to close a gap
        # A short request (at most n_quick tokens to compute: a conversation's next turn)
        # that has waited this long for a slot while every slot generates preempts the
        # one with most tokens left (0: never). Needs the host-RAM cache.
        self.preempt_after = preempt_after
        self.preemptions = 0
        self.n_batch = n_batch
        # A step that ends a prompt of at most n_quick tokens (a conversation's next turn)
        # holds at most n_quick tokens: that first token does not wait behind a long
        # prefill, which otherwise takes up to n_batch a step (fewer, longer steps: each
        # step is a pause for every sequence that is generating).
        self.n_quick = min(n_quick or n_batch, n_batch)
        self._pieces: dict[int, str | list[int]] = {}  # tokens as logprob entries carry them
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._order = itertools.count()
        self.by_id: dict[str, Sequence] = {}
        self.generated_total = 0
        # Sequences that got their first slot in the last step (for queue-wait metrics).
        self.admitted: list[Sequence] = []
        self.decoded = False  # whether the last step decoded a batch (progress, token or not)
        self.prompt_rate = 1000.0  # prompt tokens per second, measured as steps run

    # ---- bookkeeping -------------------------------------------------------------

    @property
    def n_active(self) -> int:
        return len(self.running)

    @property
    def n_queued(self) -> int:
        return len(self.waiting)

    def kv_used(self) -> int:
        used = sum(s.seq.n_past for s in self.slots if s.seq is not None)
        return used + sum(len(s.cached) for s in self.slots if s.seq is None)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def submit(self, seq: Sequence) -> None:
        seq.submitted_at = time.monotonic()
        self.by_id[seq.id] = seq
        self.waiting.append(seq)

    def cancel(self, seq_id: str) -> None:
        seq = self.by_id.get(seq_id)
        if seq is not None:
            seq.cancelled = True

    # ---- one step ------------------------------------------------------------------

    def step(self) -> list[Output]:
        """Admit, build one batch, decode it, sample. Returns what to send to clients."""
        out: list[Output] = []
        self.admitted = []
        self.decoded = False
        self._drop_cancelled()
        sources = self._admit()
        if not self.running:
            return out
        sources |= self._join_leaders()
        self._compact(sources)
        while True:
            plan = self._build_batch()
            if not plan:
                return out
            started = time.perf_counter()
            rc = self.ctx.decode(self.batch)
            if rc == 0:
                self._time_prompt(plan, time.perf_counter() - started)
                self.decoded = True
                break
            # No room in the KV cache: drop idle prefix caches first, then preempt the
            # newest sequence and requeue it at the front. Never crash.
            if not self._free_kv_for_retry(out):
                return out
        for seq, taken, row in plan:
            if seq.score_prompt and seq.n_past < seq.n_prompt and not seq.cancelled:
                self._score(seq, taken, row)
            seq.n_past += taken
            if seq.n_past < len(seq.tokens) or seq.cancelled:
                continue  # more of the prompt to go
            if seq.max_tokens == 0:  # scoring only: the prompt was the whole job
                seq.finish = "length"
                out.append(Output(seq.id, "", 0, seq.n_prompt, "length", seq.prompt_entries))
            else:
                self._sample(seq, row, out)
        for seq in [s for s in self.running if s.finish is not None]:
            self._release(seq)
        return out

    def _time_prompt(self, plan: list[tuple[Sequence, int, int]], seconds: float) -> None:
        """The prompt rate admission estimates service times with: a moving average of
        the steps that computed at least MIN_SAVE prompt tokens."""
        prompt = sum(taken for _, taken, _ in plan if taken > 1)
        if prompt >= MIN_SAVE and seconds > 0:
            self.prompt_rate += 0.2 * (prompt / seconds - self.prompt_rate)

    def _drop_cancelled(self) -> None:
        if any(s.cancelled for s in self.waiting):
            for seq in [s for s in self.waiting if s.cancelled]:
                self.waiting.remove(seq)
                self._forget(seq)
        for seq in [s for s in self.running if s.cancelled]:
            seq.finish = "cancelled"
            self._release(seq)

    def _admit(self) -> set[int]:
        """Waiting sequences into free slots; returns the slots copied from (their data
        moves at the next decode: not overwritten before it)."""
        sources: set[int] = set()
        while self.waiting:
            free = [s for s in self.slots if s.seq is None and s.index not in sources]
            if free:
                seq = self._next_waiting(free)
            else:
                preempted = self._preempt(sources)
                if preempted is None:
                    return sources
                seq, free = preempted
            seq.parked = False
            slot, reuse = self._place(seq, free, sources)
            slot.cached = []
            slot.seq, slot.scope = seq, seq.scope
            seq.slot = slot.index
            seq.n_past = reuse
            seq.order = next(self._order)
            self.running.append(seq)
            if seq.admitted_at is None:
                seq.admitted_at = time.monotonic()
            if seq.follows is None:  # a follower is reported once it joined its leader
                self._report(seq, reuse)
        return sources

    def _join_leaders(self) -> set[int]:
        """Sequences waiting on a leader's prefix copy it once the leader has computed
        it (or, if the leader left first, compute it themselves). Returns the slots
        involved: their KV data moves at the next decode."""
        involved: set[int] = set()
        for seq in self.running:
            if seq.follows is None:
                continue
            lead, length = seq.follows
            present = lead in self.running
            if present and lead.n_past < length:
                continue  # not there yet
            seq.follows = None
            if present:
                self.ctx.seq_cp_whole(lead.slot, seq.slot)
                seq.n_past = self._keep(self.slots[seq.slot], length)
                involved |= {lead.slot, seq.slot}
                log.debug("sequence %s copied %d prompt tokens from %s", seq.id, length, lead.id)
            self._report(seq, seq.n_past)
        return involved

    def _report(self, seq: Sequence, reused: int) -> None:
        """The first admission of ``seq`` is reported once (queue wait, tokens reused)."""
        if not seq.reported:
            seq.reported = True
            seq.reused = reused
            self.admitted.append(seq)

    def _next_waiting(self, free: list[Slot]) -> Sequence:
        """The waiting sequence to admit next: a paused answer, else the highest ratio of
        time waited plus service to service, where the service is what it has to compute
        (its tokens less what a free slot, a running sequence or the RAM cache holds)."""
        # Alone, or an answer paused by _preempt (it resumes first): nothing to weigh.
        if len(self.waiting) == 1 or self.waiting[0].parked:
            return self.waiting.popleft()
        cost = self._costs(free)
        now = time.monotonic()

        def ratio(seq: Sequence) -> float:
            service = cost(seq) / self.prompt_rate + STEP_SECONDS
            return (now - seq.submitted_at + STEP_SECONDS + service) / service

        window = list(itertools.islice(self.waiting, ADMIT_WINDOW))
        best = max(window, key=ratio)  # the earliest of equal ratios (max is stable)
        self.waiting.remove(best)
        return best

    def _costs(self, free: list[Slot]) -> Callable[[Sequence], int]:
        """What a waiting sequence has to compute: its tokens less the longest prefix of
        them that a free slot, a running sequence or the RAM cache holds."""
        held = [(s.tokens(), s.scope) for s in free if s.cached]
        if self.follow:
            held += [(as_tokens(r.tokens), r.scope) for r in self.running if r.follows is None]

        def cost(seq: Sequence) -> int:
            tokens = as_tokens(seq.tokens)
            found = max((_shared(seq.scope, h, hs, tokens) for h, hs in held), default=0)
            if self.host.enabled:
                found = max(found, self.host.best(tokens, seq.scope)[1])
            return len(seq.tokens) - found

        return cost

    def _preempt(self, sources: set[int]) -> tuple[Sequence, list[Slot]] | None:
        """Every slot is busy. A short waiting request (at most n_quick tokens to compute,
        a conversation's next turn) that has waited ``preempt_after`` seconds takes the
        slot of the answer with most tokens left among those that have streamed at least
        MIN_MOVE tokens (not one that just began: its user would see a first token and
        then a pause): its KV is saved to host RAM and it waits at the head of the queue,
        to resume from the same bytes (the same answer) at the next free slot. One
        answer is paused at a time, each at most once. Returns the request and the slot
        it takes."""
        if not self.preempt_after or not self.host.enabled or self.recurrent:
            return None
        if any(s.parked for s in self.waiting):
            return None
        now = time.monotonic()
        ready = [
            s for s in itertools.islice(self.waiting, ADMIT_WINDOW)
            if s.n_generated == 0 and now - s.submitted_at >= self.preempt_after
        ]  # fmt: skip
        if not ready:
            return None
        cost = self._costs([])
        short = [s for s in ready if cost(s) <= self.n_quick]
        leaders = {id(r.follows[0]) for r in self.running if r.follows is not None}
        victims = [
            r for r in self.running
            if r.remaining == 1 and not r.preempted and not r.score_prompt
            and r.n_generated >= MIN_MOVE and r.max_tokens - r.n_generated >= MIN_MOVE
            and id(r) not in leaders and r.slot not in sources
        ]  # fmt: skip
        if not short or not victims:
            return None
        seq = min(short, key=lambda s: s.submitted_at)
        victim = max(victims, key=lambda r: (r.max_tokens - r.n_generated, r.order))
        slot = self.slots[victim.slot]
        history = victim.tokens[: victim.n_past]
        mine, _ = self.host.best(as_tokens(seq.tokens), seq.scope)
        if mine is not None:
            self.host.touch(mine)  # the request's own history is not what the save evicts
        if not self._save(slot, as_tokens(history)):
            return None  # no room in RAM for it: it goes on
        self.running.remove(victim)
        slot.seq, slot.cached, slot.last_used = None, history, time.monotonic()
        victim.slot, victim.n_past = -1, 0
        victim.parked = victim.preempted = True
        self.waiting.remove(seq)
        self.waiting.appendleft(victim)
        self.preemptions += 1
        log.debug("sequence %s preempted after %d tokens for %s", victim.id,
                  victim.n_generated, seq.id)  # fmt: skip
        return seq, [slot]

    def _place(self, seq: Sequence, free: list[Slot], sources: set[int]) -> tuple[Slot, int]:
        """The slot for ``seq`` and how many of its tokens are already in that slot's KV
        cache, from the best of: the idle slot sharing the longest prefix (cut back to
        it), a copy of that prefix into a cheaper slot (when the sharing slot holds a
        longer history of its own), or a state saved in host RAM."""
        # A full hit must still decode the last prompt token to get logits; a sequence
        # scoring its prompt needs every prompt token's logits: nothing reused.
        limit = 0 if seq.score_prompt else len(seq.tokens) - 1
        tokens = as_tokens(seq.tokens)
        scope = seq.scope
        shared = {s.index: min(_shared(scope, s.tokens(), s.scope, tokens), limit) for s in free}
        src = max(free, key=lambda s: (shared[s.index], -s.index))
        best = shared[src.index]
        entry, saved = self.host.best(tokens, scope) if self.host.enabled and limit else (None, 0)
        saved = min(saved, limit)
        lead, led = self._leader(tokens, scope, limit)
        if lead is not None and led >= max(best, saved) + MIN_SAVE:
            # A running sequence has (or is computing) a longer prefix of this prompt
            # than any idle slot or saved state: copy it rather than compute it again
            # (a burst of conversations sharing a long system prompt computes it once).
            target = self._victim(free)
            self._evict(target, 0)
            self._keep(target, 0)
            done = min(led, lead.n_past)  # what the leader has computed so far
            if led - done >= MIN_SAVE or done <= max(best, saved):
                seq.follows = (lead, led)  # worth waiting a step or more for
                return target, 0
            self.ctx.seq_cp_whole(lead.slot, target.index)
            return target, self._keep(target, done)
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
                return target, self._keep(target, best)
        target = src if best else self._victim(free)
        self._evict(target, best)
        return target, self._keep(target, best)

    def _leader(
        self, tokens: np.ndarray, scope: str, limit: int
    ) -> tuple[Sequence | None, int]:
        """The running sequence of ``scope`` whose tokens (computed or still to compute)
        share the longest prefix with ``tokens``, and that length (at most ``limit``)."""
        if not self.follow or not limit:
            return None, 0
        best: tuple[Sequence | None, int] = (None, 0)
        for run in self.running:
            if run.follows is None and run.slot >= 0:
                n = min(_shared(scope, as_tokens(run.tokens), run.scope, tokens), limit)
                if n > best[1]:
                    best = (run, n)
        return best

    def _compact(self, sources: set[int]) -> None:
        """Close gaps in the running sequences' slot ids (slots 0, 1 and 3 running take
        two graph computations a step; 0, 1 and 2 take one): the sequence on the highest
        slot moves into the lowest gap whose idle history is not lost by it (empty, short,
        or saved to RAM first). Its KV stream is copied whole at the next decode, and the
        slot it leaves is emptied (its cells would only repeat the moved sequence's)."""
        if not self.compact:
            return
        while len(self.running) > 1:
            ids = sorted(s.slot for s in self.running)
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

    def _victim(self, slots: list[Slot]) -> Slot:
        """The slot whose history costs least to lose: an empty one, else the least
        recently used (the shorter history on a tie)."""
        return min(slots, key=lambda s: (bool(s.cached), s.last_used, len(s.cached), s.index))

    def _evict(self, slot: Slot, keep: int) -> None:
        """Before ``slot`` keeps only its first ``keep`` tokens: save its history to host
        RAM when that loses enough of it (and RAM does not hold it already)."""
        if not self.host.enabled or len(slot.cached) - keep < MIN_SAVE:
            return
        self._save(slot, slot.tokens())

    def _save(self, slot: Slot, tokens: np.ndarray) -> bool:
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

    def _keep(self, slot: Slot, keep: int) -> int:
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

    def _restore(self, slot: Slot, entry: Any, keep: int) -> int:
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
        kept = self._keep(slot, keep)
        self.host.stats.restore_seconds.append(time.perf_counter() - started)
        return kept

    def _build_batch(self) -> list[tuple[Sequence, int, int]]:
        """Fill the batch; returns (sequence, tokens added, logits row or -1). A sequence
        scoring its prompt has logits on every row; its rows end at the one returned."""
        budget = self.n_batch
        takes: list[tuple[Sequence, int]] = []
        # Decoding sequences first (one token each), then prompt chunks, the shortest
        # remaining first: a conversation's next turn (its history reused, a few dozen
        # new tokens) gets its first token in this step instead of waiting behind a long
        # new prompt, which takes the rest of the budget (so it still advances each step).
        for seq in self.running:
            if seq.remaining == 1 and budget > 0 and seq.follows is None:
                takes.append((seq, 1))
                budget -= 1
        for seq in sorted(self.running, key=lambda s: (s.remaining, s.order)):
            if seq.remaining > 1 and budget > 0 and seq.follows is None:
                take = min(seq.remaining, budget)
                if seq.score_prompt:  # logits for every token: bounded output memory
                    take = min(take, SCORE_CHUNK)
                takes.append((seq, take))
                budget -= take
                if take == seq.remaining <= self.n_quick:  # its first token comes soon
                    budget = min(budget, self.n_quick - (self.n_batch - budget))
        # Written in slot order: with one KV stream per sequence, llama.cpp cuts a batch
        # into micro-batches of consecutive sequence ids, so slot order keeps a decode
        # step in one micro-batch (the order does not matter to a unified cache).
        takes.sort(key=lambda t: t[0].slot)
        batch = self.batch
        batch.clear()
        plan: list[tuple[Sequence, int, int]] = []
        for seq, take in takes:
            last = take == seq.remaining
            scoring = seq.score_prompt and seq.n_past < seq.n_prompt
            if take == 1:
                row = batch.add(seq.tokens[seq.n_past], seq.n_past, seq.slot, last or scoring)
            else:
                row = batch.add_many(
                    seq.tokens[seq.n_past : seq.n_past + take],
                    seq.n_past,
                    seq.slot,
                    last,
                    all_logits=scoring,
                )
            plan.append((seq, take, row if last or scoring else -1))
        return plan

    def _free_kv_for_retry(self, out: list[Output]) -> bool:
        idle = [s for s in self.slots if s.seq is None and s.cached]
        if idle:
            for slot in idle:
                self.ctx.seq_rm(slot.index, -1, -1)
                slot.cached = []
            return True
        if len(self.running) <= 1:
            # One sequence alone does not fit: fail it rather than loop.
            for seq in list(self.running):
                seq.finish = "error"
                out.append(Output(seq.id, "", seq.n_generated, seq.n_prompt, "error"))
                self._release(seq, keep_cache=False)
            return False
        victim = max(self.running, key=lambda s: s.order)
        log.info("KV cache full: preempting sequence %s (requeued)", victim.id)
        self.ctx.seq_rm(victim.slot, -1, -1)
        self.slots[victim.slot].seq = None
        self.slots[victim.slot].cached = []
        self.running.remove(victim)
        victim.slot = -1
        victim.n_past = 0
        victim.prompt_entries = []  # scored again from the start
        victim.follows = None
        self.waiting.appendleft(victim)
        return True

    def _sample(self, seq: Sequence, row: int, out: list[Output]) -> None:
        if seq.cancelled:
            return
        scored = self._distribution(seq, row) if seq.top_logprobs is not None else None
        token = seq.sampler.sample(self.ctx, row)
        model = self.model
        finish = None
        text = ""
        complete = False
        eog = model.is_eog(token) and not seq.ignore_eos
        self.generated_total += 1
        if eog:
            finish = "stop"
        else:
            seq.tokens.append(token)
            seq.n_generated += 1
            piece = model.piece(token, special=token in seq.shown)
            text, stopped = seq.stops.feed(seq.text.feed(piece))
            complete = seq.sampler.done  # the constraint's value is whole: nothing follows
            if stopped or complete:
                finish = "stop"
            elif seq.n_generated >= seq.max_tokens or len(seq.tokens) >= seq.ctx_limit:
                finish = "length"
        if finish is not None:
            if finish == "length" or eog or complete:
                tail, stopped = seq.stops.feed(seq.text.flush())
                text += tail
                if not stopped:
                    text += seq.stops.flush()
            seq.finish = finish
        entries = None
        if scored is not None and not eog:  # an end-of-generation token is no content
            entries = [self._entry(token, scored)]
        if seq.prompt_entries:  # the prompt's, ahead of the first generated token
            entries = seq.prompt_entries + (entries or [])
            seq.prompt_entries = []
        # The first token is always reported (time to first token), text or not; with
        # logprobs, every token (its entry travels with the step that made it).
        if text or finish is not None or seq.n_generated == 1 or entries:
            stop = seq.stops.matched if finish == "stop" else None
            out.append(Output(seq.id, text, seq.n_generated, seq.n_prompt, finish, entries, stop))

    def _score(self, seq: Sequence, taken: int, last_row: int) -> None:
        """The logprobs of the prompt tokens this chunk's rows predict: row j holds the
        distribution of the token after position n_past + j. The first prompt token has
        none (OpenAI's null)."""
        first = last_row - taken + 1
        if seq.n_past == 0:
            seq.prompt_entries.append([self._wire_piece(seq.tokens[0]), None, []])
        for j in range(taken):
            nxt = seq.n_past + j + 1
            if nxt >= seq.n_prompt:
                break  # the last prompt row predicts the first generated token
            entry = self._entry(seq.tokens[nxt], self._distribution(seq, first + j))
            seq.prompt_entries.append(entry)

    def _distribution(self, seq: Sequence, row: int) -> tuple[Any, float, list[LogprobEntry]]:
        """The raw model distribution of this row (before penalties, temperature and any
        constraint): the logits row, its log-sum-exp and the top alternatives, all read
        before the sampler runs (ignore_eos writes -inf into the row)."""
        x = self.ctx.logits(row)  # llama.cpp's buffer, valid until the next decode
        m = float(x.max())
        lse = m + math.log(float(np.exp(x - m).sum()))
        k = seq.top_logprobs or 0
        top: list[LogprobEntry] = []
        if k:
            best = np.argpartition(x, -k)[-k:]
            for t in sorted(best.tolist(), key=lambda t: -float(x[t])):
                top.append([self._wire_piece(t), float(x[t]) - lse])
        return x, lse, top

    def _wire_piece(self, token: int) -> str | list[int]:
        """A token as logprob entries carry it: text when its bytes are whole UTF-8 (most
        tokens: a smaller frame), else the bytes themselves. Cached per token."""
        cached = self._pieces.get(token)
        if cached is None:
            raw = self.model.piece(token)
            try:
                cached = raw.decode("utf-8")
            except UnicodeDecodeError:
                cached = list(raw)
            self._pieces[token] = cached
        return cached

    def _entry(self, token: int, scored: tuple[Any, float, list[LogprobEntry]]) -> LogprobEntry:
        x, lse, top = scored
        return [self._wire_piece(token), float(x[token]) - lse, top]

    def _release(self, seq: Sequence, keep_cache: bool = True) -> None:
        if seq in self.running:
            self.running.remove(seq)
        if seq.slot >= 0:
            slot = self.slots[seq.slot]
            slot.seq = None
            slot.last_used = time.monotonic()
            if keep_cache:
                slot.cached = seq.tokens[: seq.n_past]
            else:
                self.ctx.seq_rm(slot.index, -1, -1)
                slot.cached = []
            seq.slot = -1
        self._forget(seq)

    def _forget(self, seq: Sequence) -> None:
        seq.sampler.close()
        self.by_id.pop(seq.id, None)


class BurstTracker:
    """How many requests come together when the engine starts from idle: those it
    started with plus those that arrived during its first step. Clients that take turns
    (a benchmark, a batch job) come back as a burst of that size; the worker then waits
    a moment for the whole burst so it shares one first step. A lone client: 1."""

    def __init__(self) -> None:
        self.expected = 1
        self._started_with: int | None = None

    def observe(self, starting: bool, n_new: int) -> None:
        """Called once per loop turn with the requests it took in; ``starting`` when
        the engine had nothing running before them."""
        if starting:
            self._started_with = n_new
        elif self._started_with is not None:
            self.expected = self._started_with + n_new
            self._started_with = None
