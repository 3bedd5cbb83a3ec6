"""Log probabilities in OpenAI's two shapes (Ollama's is OpenAI's chat entries, at the top
of each response), from the engine's entries (one per generated
token: the token, its logprob, the top alternatives as [token, logprob]; a token is its
text, or its raw bytes as a list of ints when they are not whole UTF-8). A token that holds
part of a UTF-8 character shows U+FFFD in its text, and its ``bytes`` are exact, as
OpenAI's are."""

from __future__ import annotations

from typing import Any


def _text(token: str | list[int]) -> str:
    return token if isinstance(token, str) else bytes(token).decode("utf-8", "replace")


def _bytes(token: str | list[int]) -> list[int]:
    return list(token.encode()) if isinstance(token, str) else token


def chat_content(entries: list[Any]) -> list[dict[str, Any]]:
    """``choices[].logprobs.content`` items (chat completions, streamed or not)."""
    return [
        {
            "token": _text(raw),
            "logprob": lp,
            "bytes": _bytes(raw),
            "top_logprobs": [
                {"token": _text(alt), "logprob": alt_lp, "bytes": _bytes(alt)}
                for alt, alt_lp in top
            ],
        }
        for raw, lp, top in entries
    ]


class CompletionLogprobs:
    """The legacy completions shape, built chunk by chunk: ``tokens``, ``token_logprobs``,
    ``top_logprobs`` (one {token: logprob} object per token) and ``text_offset`` (where
    each token starts in the choice's text, echoed prompt included)."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    def add(self, entries: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for raw, lp, top in entries:
            token = _text(raw)
            out["tokens"].append(token)
            out["token_logprobs"].append(lp)
            # The first prompt token has no logprob, and no alternatives (null, as OpenAI).
            alts = {_text(alt): alt_lp for alt, alt_lp in top} if lp is not None else None
            out["top_logprobs"].append(alts)
            out["text_offset"].append(self.offset)
            self.offset += len(token)
        return out
