"""Continuous batching: slots, admission, one llama_batch per step, prefix reuse.

Every sequence is just a list of tokens and a count of how many are already in the KV
cache. Each step puts, for every running sequence, the tokens it still needs into ONE
batch: one token for sequences that are generating, a chunk of the prompt for sequences
that are prefilling, until the batch budget (n_batch) is spent. There is no separate
prefill mode: a new request joins at the next step.

The Scheduler coordinates three collaborators, split as vLLM's scheduler is (queue
policy, KV placement, the step): engine/admission.py chooses who is admitted next and
who is preempted; engine/slots.py places a sequence in a slot with the most of its prompt
already in KV (idle slots, running sequences, the host-RAM cache, saved sessions, each
within the request's cache scope) and moves, saves and frees KV; engine/decode_step.py
builds the batch and, after the decode, samples and emits. The Scheduler owns the queues
(waiting, running) and the step's order; it holds no llama.cpp types.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from typing import Any

from .admission import Admission
from .decode_step import Emitter, Plan, build_batch, prompt_tokens
from .kvcache import HostCache
from .sequence import Output, Sequence, Slot
from .slots import KVSlots

log = logging.getLogger(__name__)


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
        self.ctx = ctx
        self.batch = batch
        self.kv = KVSlots(ctx, n_slots, host_cache, n_swa, recurrent, streams)
        self.slots = self.kv.slots
        self.host = self.kv.host
        self.n_batch = n_batch
        # A step that ends a prompt of at most n_quick tokens (a conversation's next turn)
        # holds at most n_quick tokens (see build_batch); such a request may preempt.
        self.n_quick = min(n_quick or n_batch, n_batch)
        self.admission = Admission(self.kv, self.n_quick, preempt_after)
        self.emitter = Emitter(model, ctx)
        self.preemptions = 0  # answers paused (KV to RAM) so that a short request could start
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._order = itertools.count()
        self.by_id: dict[str, Sequence] = {}
        # Sequences that got their first slot in the last step (for queue-wait metrics).
        self.admitted: list[Sequence] = []
        self.decoded = False  # whether the last step decoded a batch (progress, token or not)

    # ---- bookkeeping -------------------------------------------------------------

    @property
    def n_active(self) -> int:
        return len(self.running)

    @property
    def n_queued(self) -> int:
        return len(self.waiting)

    @property
    def generated_total(self) -> int:
        return self.emitter.generated_total

    @property
    def moves(self) -> int:
        """Running sequences moved to close a gap in the slot ids."""
        return self.kv.moves

    def kv_used(self) -> int:
        return self.kv.used()

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
        self.kv.compact(self.running, sources)
        plan = self._decode(out)
        if plan is None:
            return out
        self.emitter.emit(plan, out)
        for seq in [s for s in self.running if s.finish is not None]:
            self._release(seq)
        return out

    def _decode(self, out: list[Output]) -> Plan | None:
        """Build the batch and decode it. No room in the KV cache: drop idle prefix
        caches first, then preempt the newest sequence and requeue it at the front, and
        try again; never crash. None when nothing was decoded."""
        while True:
            plan = build_batch(self.batch, self.running, self.n_batch, self.n_quick)
            if not plan:
                return None
            started = time.perf_counter()
            if self.ctx.decode(self.batch) == 0:
                self.admission.time_prompt(prompt_tokens(plan), time.perf_counter() - started)
                self.decoded = True
                return plan
            if not self._free_kv_for_retry(out):
                return None

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
            free = self.kv.free(sources)
            if free:
                seq = self.admission.next(self.waiting, free, self.running)
            else:
                preempted = self._preempt(sources)
                if preempted is None:
                    return sources
                seq, free = preempted
            seq.parked = False
            slot, reuse = self.kv.place(seq, free, sources, self.running)
            self.kv.occupy(slot, seq)
            seq.n_past = reuse
            seq.order = next(self._order)
            self.running.append(seq)
            if seq.admitted_at is None:
                seq.admitted_at = time.monotonic()
            if seq.follows is None:  # a follower is reported once it joined its leader
                self._report(seq, reuse)
        return sources

    def _preempt(self, sources: set[int]) -> tuple[Sequence, list[Slot]] | None:
        """Every slot is busy: the request the admission policy lets preempt an answer,
        and the slot it takes (the answer's KV saved to RAM, the answer at the head of the
        queue to resume from it); None when none may."""
        chosen = self.admission.preemption(self.waiting, self.running, sources)
        if chosen is None:
            return None
        seq, victim = chosen
        slot = self.kv.park(victim, seq)
        if slot is None:
            return None  # no room in RAM for it: it goes on
        self.running.remove(victim)
        victim.parked = victim.preempted = True
        self.waiting.remove(seq)
        self.waiting.appendleft(victim)
        self.preemptions += 1
        log.debug("sequence %s preempted after %d tokens for %s", victim.id,
                  victim.n_generated, seq.id)  # fmt: skip
        return seq, [slot]

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
                self.kv.join(seq, lead, length)
                involved |= {lead.slot, seq.slot}
            self._report(seq, seq.n_past)
        return involved

    def _report(self, seq: Sequence, reused: int) -> None:
        """The first admission of ``seq`` is reported once (queue wait, tokens reused)."""
        if not seq.reported:
            seq.reported = True
            seq.reused = reused
            self.admitted.append(seq)

    def _free_kv_for_retry(self, out: list[Output]) -> bool:
        if self.kv.drop_idle():
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
        self.kv.vacate(victim)
        self.running.remove(victim)
        victim.prompt_entries = []  # scored again from the start
        victim.follows = None
        self.waiting.appendleft(victim)
        return True

    def _release(self, seq: Sequence, keep_cache: bool = True) -> None:
        if seq in self.running:
            self.running.remove(seq)
        if seq.slot >= 0:
            self.kv.release(seq, keep_cache)
        self._forget(seq)

    def _forget(self, seq: Sequence) -> None:
        seq.sampler.close()
        self.by_id.pop(seq.id, None)
