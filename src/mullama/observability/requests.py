"""What the hub keeps of the requests it closes (each one's ``RequestContext``,
requestctx.py): token rates, per-model summaries, percentiles."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..requestctx import RequestContext


class RateMeter:
    """Tokens per second over the last ``window`` seconds (a gauge, not a counter).
    Samples are bucketed every ``resolution`` seconds, so the memory is bounded."""

    def __init__(self, window: float = 10.0, resolution: float = 0.5) -> None:
        self.window = window
        self.resolution = resolution
        self.total = 0
        self._first: float | None = None
        self._samples: deque[tuple[float, int]] = deque()  # (time, total before it)
        self._lock = threading.Lock()

    def add(self, n: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._first is None:
                self._first = now
            if not self._samples or now - self._samples[-1][0] >= self.resolution:
                self._samples.append((now, self.total))
            self.total += n
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0][0] <= now - self.window:
            self._samples.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            if not self._samples or self._first is None:
                return 0.0
            span = min(self.window, now - self._first)
            return (self.total - self._samples[0][1]) / max(span, self.resolution)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


@dataclass
class ModelSummary:
    """What /completion-metrics reports for one model."""

    requests: int = 0
    succeeded: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    speeds: deque[float] = field(default_factory=lambda: deque(maxlen=1000))

    def add(self, record: RequestContext, ok: bool, ended: float) -> None:
        self.requests += 1
        self.succeeded += ok
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens
        if record.first_token is not None:
            self.ttfts.append(record.first_token - record.started)
            decode = ended - record.first_token
            if record.completion_tokens > 1 and decode > 0:
                self.speeds.append(record.completion_tokens / decode)

    def to_json(self) -> dict[str, Any]:
        ttfts = list(self.ttfts)
        return {
            "total_requests": self.requests,
            "successful_requests": self.succeeded,
            "success_rate": round(self.succeeded / self.requests, 6) if self.requests else None,
            "ttft_avg_ms": _ms(sum(ttfts) / len(ttfts)) if ttfts else None,
            "ttft_p95_ms": _ms(percentile(ttfts, 95)),
            "tokens_per_second_avg": (
                round(sum(self.speeds) / len(self.speeds), 3) if self.speeds else None
            ),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
