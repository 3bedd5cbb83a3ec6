"""The scheduler's nouns: a sequence (one request's tokens and progress), a slot (one KV
stream of the context, with the sequence it serves or the history it keeps idle) and an
output (what one step says about one sequence). No llama.cpp types: the scheduler's
modules (admission, slots, decode_step) and their fakes share these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .detokenize import IncrementalText, StopMatcher
from .kvcache import as_tokens, common_prefix
from .reasoning import Thinking


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
    thinking: Thinking | None = None  # its thinking block's state (SamplingParams.thinking)

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
    reasoning: str = ""  # new thinking text, apart from text (a sequence with thinking)
    n_reasoning: int = 0  # its thinking tokens so far, markers included


@dataclass
class Slot:
    index: int
    seq: Sequence | None = None
    cached: list[int] = field(default_factory=list)  # tokens in KV of an idle slot
    last_used: float = 0.0  # time.monotonic() its last sequence ended
    scope: str = ""  # the cache scope of its sequence, or of its idle history

    def tokens(self) -> np.ndarray:
        return as_tokens(self.cached)


def shared(scope: str, held: np.ndarray, held_scope: str, tokens: np.ndarray) -> int:
    """The prefix of ``tokens`` (a request of ``scope``) that ``held`` (KV of
    ``held_scope``) can give it: none across scopes."""
    return common_prefix(held, tokens) if scope == held_scope else 0
