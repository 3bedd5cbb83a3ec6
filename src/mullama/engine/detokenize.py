"""Incremental, UTF-8-safe detokenization and stop-string hold-back.

Both work on deltas: a token's bytes are fed once, and only new text comes out. Nothing
here re-decodes the whole generated text.
"""

from __future__ import annotations

import codecs


class IncrementalText:
    """Turns a stream of token byte pieces into text without splitting a UTF-8 character."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """The end of the text. Whatever the decoder still holds is the start of a
        character the end cut off (max_tokens inside a multi-byte character): dropped, as
        llama-server does, rather than shown as U+FFFD."""
        self._decoder.reset()
        return ""


class StopMatcher:
    """Holds back text that could be the start of a stop string; never emits a stop string.

    ``feed`` returns (text safe to emit now, stopped). Once stopped, the text after the
    stop string is dropped.
    """

    __slots__ = ("_stops", "_pending", "_max_len", "matched")

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.matched: str | None = None  # the stop string that ended the text
        self._max_len = max((len(s) for s in self._stops), default=0)

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        pending = self._pending + text
        # A stop may start inside the held-back part, so search the whole pending text.
        first = -1
        for stop in self._stops:
            idx = pending.find(stop)
            if idx != -1 and (first == -1 or idx < first):
                first = idx
                self.matched = stop
        if first != -1:
            self._pending = ""
            return pending[:first], True
        hold = self._partial_suffix(pending)
        if hold:
            self._pending = pending[-hold:]
            return pending[:-hold], False
        self._pending = ""
        return pending, False

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop."""
        best = 0
        limit = min(len(text), self._max_len - 1)
        for stop in self._stops:
            for k in range(min(limit, len(stop) - 1), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out
