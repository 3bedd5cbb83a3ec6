"""One sequence's thinking (issue 34): where the reply is (before, inside or after its
thinking block), the split of its raw text into thinking and answer, and the tokens the
engine writes itself (the block's opening when thinking is asked for, its closing when
the budget is spent).

Pure Python, fed one token's text at a time by the Emitter (engine/decode_step.py), with
the same split whole or streamed: a marker cut across tokens is held back until it is
decided. Markers are never shown; the whitespace right after the opening and right after
the closing is dropped, and so is the whitespace that ends the thinking before its
closing; ``answer`` (gpt-oss's ``<|start|>assistant<|channel|>final<|message|>``) is
dropped where the answer begins. A reply that does not open the block is all answer; a
reply that ends inside it (an end-of-generation token) is closed by the engine instead,
and the model goes on to answer.

What counts as a thinking token (``n_tokens``, the reply's reasoning_tokens): every token
from the first one of the opening (written by the engine or sampled, whitespace before it
included) to the one that completes the closing. The budget counts only the tokens
sampled inside the block (``n_sampled``): the markers the engine writes are not the
model's thinking.
"""

from __future__ import annotations

from collections.abc import Callable

from .protocol import ThinkSyntax

START, INSIDE, AFTER = 0, 1, 2


def initial_phase(syntax: ThinkSyntax, prompt: str) -> int:
    """Where a reply starts, from its rendered prompt: inside the block when the prompt
    opens it (DeepSeek-R1's ``<think>\\n``), after it when the prompt already closed it
    (Qwen3 with thinking off), else at the start (the reply may open it)."""
    tail = prompt.rstrip()
    if syntax.close and tail.endswith(syntax.close):
        return AFTER
    if syntax.open and tail.endswith(syntax.open):
        return INSIDE
    return START


def _partial(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that begins ``marker`` (not all of it)."""
    for k in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class Thinking:
    """The thinking state of one sequence. ``tokenize`` turns the text the engine writes
    itself into tokens (special tokens parsed, no BOS)."""

    __slots__ = (
        "syntax", "phase", "tokenize", "n_tokens", "n_sampled", "_held", "_strip", "_lead",
        "_answer", "_pending", "_nl", "_forced_open", "_forced_close",
    )  # fmt: skip

    def __init__(
        self, syntax: ThinkSyntax, phase: int, tokenize: Callable[[str], list[int]]
    ) -> None:
        self.syntax = syntax
        self.phase = phase
        self.tokenize = tokenize
        self.n_tokens = 0  # thinking tokens so far, markers included
        self.n_sampled = 0  # tokens sampled inside the block (what the budget counts)
        self._held = ""  # text not decided yet (a marker's start, whitespace)
        self._strip = phase != START  # dropping whitespace (after a marker)
        self._lead = phase == AFTER  # at the answer's start: dropping whitespace, answer
        self._answer = syntax.answer  # the answer prefix, until it is dropped or ruled out
        self._pending = 0  # tokens fed at the start that may turn out to open the block
        self._nl = phase == INSIDE  # the raw text so far ends with a newline
        self._forced_open = self._forced_close = False

    def due(self) -> list[int]:
        """The tokens the engine writes now instead of sampling one: the opening (with
        ``force_open``, before the reply's first token) or the closing (the budget
        spent); each at most once. Empty when the model goes on."""
        syn = self.syntax
        if self.phase == START:
            if syn.force_open and not self._forced_open:
                self._forced_open = True
                return self.tokenize(syn.open + "\n")
        elif self.phase == INSIDE and syn.budget is not None and self.n_sampled >= syn.budget:
            return self.close()
        return []

    def close(self) -> list[int]:
        """The closing the engine writes (the budget spent, or the model ended its reply
        inside the block: a reply does not end in its thinking): a newline unless the
        thinking ended with one, ``close``, then ``answer`` or a blank line; at most
        once (empty after)."""
        if self._forced_close or self.phase != INSIDE:
            return []
        self._forced_close = True
        syn = self.syntax
        return self.tokenize(("" if self._nl else "\n") + syn.close + (syn.answer or "\n\n"))

    def feed(self, text: str, forced: bool = False) -> tuple[str, str]:
        """One token's text: (new thinking, new answer). ``forced``: a token the engine
        wrote (not counted by the budget)."""
        phase = self.phase
        if phase == INSIDE:
            self.n_tokens += 1
            if not forced:
                self.n_sampled += 1
        elif phase == START:
            self._pending += 1
        elif not self._lead:
            return "", text  # the answer, after the block
        if text:
            self._nl = text[-1] == "\n"
        buf, self._held = self._held + text, ""
        return self._split(buf, False)

    def flush(self, text: str = "") -> tuple[str, str]:
        """The end of the reply (with the last ``text`` the detokenizer held): what was
        held back, decided as it stands (the start of an opening the engine wrote, cut
        off by max_tokens, is no text)."""
        buf, self._held = self._held + text, ""
        if self.phase == START and self._forced_open:
            return "", ""
        return self._split(buf, True)

    def _split(self, buf: str, final: bool) -> tuple[str, str]:
        think = answer = ""
        while buf or self.phase == START:
            if self.phase == START:
                buf, part = self._at_start(buf, final)
                answer += part
            elif self.phase == INSIDE:
                buf, part = self._inside(buf, final)
                think += part
            else:
                buf, part = self._after(buf, final)
                answer += part
            if self.phase == START:
                break  # held (or empty)
        return think, answer

    def _at_start(self, buf: str, final: bool) -> tuple[str, str]:
        """Before the block: it opens after optional whitespace, or the reply is all
        answer."""
        opening = self.syntax.open
        rest = buf.lstrip()
        if rest.startswith(opening):
            self.phase, self._strip = INSIDE, True
            self.n_tokens += self._pending  # the tokens that wrote the opening
            return rest[len(opening) :], ""
        if not final and opening.startswith(rest):
            self._held = buf  # may still open (or only whitespace so far)
            return "", ""
        self.phase, self._lead = AFTER, False  # no block: all of it is the answer
        return "", buf

    def _inside(self, buf: str, final: bool) -> tuple[str, str]:
        """In the block: thinking up to the closing (the whitespace before the closing
        dropped), with a possible closing's start and trailing whitespace held back."""
        if self._strip:
            buf = buf.lstrip()
            if not buf:
                return "", ""
            self._strip = False
        close = self.syntax.close
        at = buf.find(close) if close else -1
        if at >= 0:
            self.phase, self._strip, self._lead = AFTER, True, True
            return buf[at + len(close) :], buf[:at].rstrip()
        if final:
            return "", buf
        hold = _partial(buf, close)
        shown = buf[: len(buf) - hold]
        kept = shown.rstrip()
        self._held = buf[len(kept) :]
        return "", kept

    def _after(self, buf: str, final: bool) -> tuple[str, str]:
        """After the block: the answer, its leading whitespace and ``answer`` prefix
        dropped."""
        if not self._lead:
            return "", buf
        rest = buf.lstrip()
        if not rest:
            return "", ""
        prefix = self._answer
        if prefix and rest.startswith(prefix):
            self._answer = ""
            return rest[len(prefix) :], ""
        if prefix and not final and prefix.startswith(rest):
            self._held = rest
            return "", ""
        self._lead = False
        return "", rest
