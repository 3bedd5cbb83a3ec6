"""Queue policy: which waiting sequence gets the next free slot, when a short request may
preempt a running answer, and how many requests come together from idle.

The policy decides; engine/slots.py knows what a sequence has to compute (the prefix a
slot, a running sequence or the RAM cache holds for it) and carries a preemption out.
"""

from __future__ import annotations

import itertools
import time
from collections import deque

from .sequence import Sequence, Slot
from .slots import MIN_MOVE, MIN_SAVE, KVSlots

# Admission among the first ADMIT_WINDOW waiting sequences is highest response ratio next:
# (time waited + service) / service, the service being the tokens left to compute at the
# measured prompt rate, plus one step (STEP_SECONDS, also added to every wait). Among
# sequences that have waited alike the shortest goes first (a warm turn that computes a
# few dozen tokens before a new 1,000-token prompt); a long one's ratio grows as it waits,
# so none starves. At 300 prompt tokens/s, a 1,000-token prompt that has waited 10 s goes
# before a 30-token turn that has waited less than ~0.6 s.
ADMIT_WINDOW = 32
STEP_SECONDS = 0.05


class Admission:
    def __init__(self, kv: KVSlots, n_quick: int, preempt_after: float = 0.0) -> None:
        self.kv = kv
        # A request of at most n_quick tokens to compute is short (a conversation's next
        # turn): when it has waited preempt_after seconds for a slot while every slot
        # generates, it preempts the answer with most tokens left (0: never).
        self.n_quick = n_quick
        self.preempt_after = preempt_after
        self.prompt_rate = 1000.0  # prompt tokens per second, measured as steps run

    def next(self, waiting: deque[Sequence], free: list[Slot], running: list[Sequence]) -> Sequence:
        """The waiting sequence to admit next, taken off ``waiting``: a paused answer,
        else the highest ratio of time waited plus service to service, where the service
        is what it has to compute (its tokens less what a free slot, a running sequence
        or the RAM cache holds)."""
        # Alone, or an answer paused by a preemption (it resumes first): nothing to weigh.
        if len(waiting) == 1 or waiting[0].parked:
            return waiting.popleft()
        cost = self.kv.costs(free, running)
        now = time.monotonic()

        def ratio(seq: Sequence) -> float:
            service = cost(seq) / self.prompt_rate + STEP_SECONDS
            return (now - seq.submitted_at + STEP_SECONDS + service) / service

        window = list(itertools.islice(waiting, ADMIT_WINDOW))
        best = max(window, key=ratio)  # the earliest of equal ratios (max is stable)
        waiting.remove(best)
        return best

    def preemption(
        self, waiting: deque[Sequence], running: list[Sequence], sources: set[int]
    ) -> tuple[Sequence, Sequence] | None:
        """Every slot is busy. A short waiting request (at most n_quick tokens to compute,
        a conversation's next turn) that has waited ``preempt_after`` seconds takes the
        slot of the answer with most tokens left among those that have streamed at least
        MIN_MOVE tokens (not one that just began: its user would see a first token and
        then a pause): its KV is saved to host RAM and it waits at the head of the queue,
        to resume from the same bytes (the same answer) at the next free slot. One
        answer is paused at a time, each at most once. Returns (the request, the answer
        it preempts), or None."""
        if not self.preempt_after or not self.kv.host.enabled or self.kv.recurrent:
            return None
        if any(s.parked for s in waiting):
            return None
        now = time.monotonic()
        ready = [
            s for s in itertools.islice(waiting, ADMIT_WINDOW)
            if s.n_generated == 0 and now - s.submitted_at >= self.preempt_after
        ]  # fmt: skip
        if not ready:
            return None
        cost = self.kv.costs([], running)
        short = [s for s in ready if cost(s) <= self.n_quick]
        leaders = {id(r.follows[0]) for r in running if r.follows is not None}
        victims = [
            r for r in running
            if r.remaining == 1 and not r.preempted and not r.score_prompt
            and r.n_generated >= MIN_MOVE and r.max_tokens - r.n_generated >= MIN_MOVE
            and id(r) not in leaders and r.slot not in sources
        ]  # fmt: skip
        if not short or not victims:
            return None
        seq = min(short, key=lambda s: s.submitted_at)
        victim = max(victims, key=lambda r: (r.max_tokens - r.n_generated, r.order))
        return seq, victim

    def time_prompt(self, prompt_tokens: int, seconds: float) -> None:
        """The prompt rate service times are estimated with: a moving average of the
        steps that computed at least MIN_SAVE prompt tokens."""
        if prompt_tokens >= MIN_SAVE and seconds > 0:
            self.prompt_rate += 0.2 * (prompt_tokens / seconds - self.prompt_rate)


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
