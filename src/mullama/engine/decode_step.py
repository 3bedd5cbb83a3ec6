"""The step: one batch for every running sequence (a token for those generating, a chunk of
the prompt for those prefilling, within the n_batch budget), then, once it is decoded, a
token sampled for each sequence whose prompt is done, detokenized, checked against stop
strings and turned into outputs (with logprobs when asked).

This is the hot path: per token, one sampler call, one piece, one incremental decode and
one stop check; nothing re-reads the whole text.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .reasoning import INSIDE
from .sequence import LogprobEntry, Output, Sequence

# Prompt tokens per step of a sequence scoring its prompt: each row keeps a vocabulary of
# logits (64 x 49k floats = 12 MB for SmolLM2), so a long prompt is scored in chunks.
SCORE_CHUNK = 64

# (sequence, tokens it put in the batch, the logits row to sample from or -1). A sequence
# scoring its prompt has logits on every row; its rows end at the one given.
Plan = list[tuple[Sequence, int, int]]


def build_batch(batch: Any, running: list[Sequence], n_batch: int, n_quick: int) -> Plan:
    """Fill ``batch`` (cleared first) for one step of ``running``; returns its plan."""
    budget = n_batch
    takes: list[tuple[Sequence, int]] = []
    # Decoding sequences first (one token each), then prompt chunks, the shortest
    # remaining first: a conversation's next turn (its history reused, a few dozen
    # new tokens) gets its first token in this step instead of waiting behind a long
    # new prompt, which takes the rest of the budget (so it still advances each step).
    for seq in running:
        if seq.remaining == 1 and budget > 0 and seq.follows is None:
            takes.append((seq, 1))
            budget -= 1
    for seq in sorted(running, key=lambda s: (s.remaining, s.order)):
        if seq.remaining > 1 and budget > 0 and seq.follows is None:
            take = min(seq.remaining, budget)
            if seq.score_prompt:  # logits for every token: bounded output memory
                take = min(take, SCORE_CHUNK)
            takes.append((seq, take))
            budget -= take
            # A step that ends a prompt of at most n_quick tokens (a conversation's next
            # turn) holds at most n_quick tokens: that first token does not wait behind
            # a long prefill, which otherwise takes up to n_batch a step (fewer, longer
            # steps: each step is a pause for every sequence that is generating).
            if take == seq.remaining <= n_quick:
                budget = min(budget, n_quick - (n_batch - budget))
    # Written in slot order: with one KV stream per sequence, llama.cpp cuts a batch
    # into micro-batches of consecutive sequence ids, so slot order keeps a decode
    # step in one micro-batch (the order does not matter to a unified cache).
    takes.sort(key=lambda t: t[0].slot)
    batch.clear()
    plan: Plan = []
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


def prompt_tokens(plan: Plan) -> int:
    """The prompt tokens a step computed (chunks of more than one token)."""
    return sum(taken for _, taken, _ in plan if taken > 1)


class Emitter:
    """After a decode: samples, detokenizes, stops and reports each sequence of the plan.
    ``model`` gives ``is_eog`` and ``piece``; ``ctx`` gives ``logits`` rows."""

    def __init__(self, model: Any, ctx: Any) -> None:
        self.model = model
        self.ctx = ctx
        self.generated_total = 0
        self._pieces: dict[int, str | list[int]] = {}  # tokens as logprob entries carry them

    def emit(self, plan: Plan, out: list[Output]) -> None:
        """Advance each sequence of the decoded ``plan``; a sequence whose prompt is done
        gets its next token. Appends what to send to clients to ``out``."""
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

    def _sample(self, seq: Sequence, row: int, out: list[Output]) -> None:
        th = seq.thinking
        if th is not None:
            forced = th.due()
            if forced:
                self._force(seq, forced, out)
                return
        scored = self._distribution(seq, row) if seq.top_logprobs is not None else None
        if th is None or th.phase != INSIDE:
            token = seq.sampler.sample(self.ctx, row)
        else:  # thinking: the constraint governs the answer only
            token = seq.sampler.sample(self.ctx, row, False)
            if self.model.is_eog(token) and not seq.ignore_eos and (closing := th.close()):
                self._force(seq, closing, out)  # a reply does not end in its thinking
                return
        model = self.model
        finish = None
        text = think = ""
        complete = False
        eog = model.is_eog(token) and not seq.ignore_eos
        self.generated_total += 1
        if eog:
            finish = "stop"
        else:
            seq.tokens.append(token)
            seq.n_generated += 1
            piece = model.piece(token, special=token in seq.shown)
            if th is None:
                text, stopped = seq.stops.feed(seq.text.feed(piece))
            else:
                think, answer = th.feed(seq.text.feed(piece))
                text, stopped = seq.stops.feed(answer)
            complete = seq.sampler.done  # the constraint's value is whole: nothing follows
            if stopped or complete:
                finish = "stop"
            elif seq.n_generated >= seq.max_tokens or len(seq.tokens) >= seq.ctx_limit:
                finish = "length"
        if finish is not None:
            if finish == "length" or eog or complete:
                more, tail = self._rest(seq)
                think += more
                text += tail
            seq.finish = finish
        entries = None
        if scored is not None and not eog:  # an end-of-generation token is no content
            entries = [self._entry(token, scored)]
        # The first token is always reported (time to first token), text or not; with
        # logprobs, every token (its entry travels with the step that made it).
        if text or think or finish is not None or seq.n_generated == 1 or entries:
            if th is None and not seq.prompt_entries:  # the common case, inline
                stop = seq.stops.matched if finish == "stop" else None
                o = Output(seq.id, text, seq.n_generated, seq.n_prompt, finish, entries, stop)
                out.append(o)
            else:
                self._report(seq, text, think, finish, entries, out)

    def _force(self, seq: Sequence, tokens: list[int], out: list[Output]) -> None:
        """Tokens the engine writes itself instead of sampling one (a thinking block's
        opening or closing): into the sequence and the counts as sampled ones, the
        sampler's chain told (penalties), the constraint not; no logprobs."""
        th = seq.thinking
        assert th is not None
        room = min(seq.max_tokens - seq.n_generated, seq.ctx_limit - len(seq.tokens))
        text = think = ""
        finish = None
        for token in tokens[:room]:  # room for one at least: it did not end
            seq.sampler.accept(token)
            seq.tokens.append(token)
            seq.n_generated += 1
            self.generated_total += 1
            piece = self.model.piece(token, special=token in seq.shown)
            more, answer = th.feed(seq.text.feed(piece), True)
            answer, stopped = seq.stops.feed(answer)
            think += more
            text += answer
            if stopped:
                finish = "stop"
                break
        if finish is None and (
            seq.n_generated >= seq.max_tokens or len(seq.tokens) >= seq.ctx_limit
        ):
            finish = "length"
            more, tail = self._rest(seq)
            think += more
            text += tail
        seq.finish = finish
        self._report(seq, text, think, finish, None, out)

    def _rest(self, seq: Sequence) -> tuple[str, str]:
        """What the sequence held back when it ends (a character cut off, a marker's or a
        stop string's start): (thinking, text)."""
        raw = seq.text.flush()
        think = ""
        if seq.thinking is not None:
            think, raw = seq.thinking.flush(raw)
        tail, stopped = seq.stops.feed(raw)
        if not stopped:
            tail += seq.stops.flush()
        return think, tail

    def _report(
        self,
        seq: Sequence,
        text: str,
        think: str,
        finish: str | None,
        entries: list[LogprobEntry] | None,
        out: list[Output],
    ) -> None:
        if seq.prompt_entries:  # the prompt's, ahead of the first generated token
            entries = seq.prompt_entries + (entries or [])
            seq.prompt_entries = []
        stop = seq.stops.matched if finish == "stop" else None
        o = Output(seq.id, text, seq.n_generated, seq.n_prompt, finish, entries, stop)
        if seq.thinking is not None:
            o.reasoning = think
            o.n_reasoning = seq.thinking.n_tokens
        out.append(o)

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
