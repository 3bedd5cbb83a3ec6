"""A circuit breaker per model: a model whose engine keeps failing (worker crashes, load
failures, engine errors, timeouts) stops taking requests for a while, so they fail fast
with 503 and ``Retry-After`` instead of piling up behind a broken model.

Closed: requests pass; ``threshold`` failures within ``window`` seconds open it.
Open: requests fail at once until ``cooldown`` has passed. Half-open: one probe request
is let through (others still fail fast); its success closes the circuit, its failure
opens it again. A request that ends without a verdict (its client left) frees the probe.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import ClientDisconnected, ClientError, ModelUnloaded, MullamaError, Unavailable

STATES = ("closed", "half_open", "open")  # the gauge's values: 0, 1, 2


def counts_as_failure(exc: BaseException) -> bool:
    """The model's fault, not the client's and not a full queue: engine and load
    failures, crashes, timeouts."""
    if not isinstance(exc, MullamaError) or isinstance(exc, ClientDisconnected):
        return False
    if isinstance(exc, ClientError | Unavailable | ModelUnloaded):
        return False  # the client's, a full queue, or an unload under the request
    return exc.status >= 500


@dataclass
class CircuitBreaker:
    name: str
    threshold: int = 5
    window: float = 60.0
    cooldown: float = 30.0
    state: str = "closed"
    failures: list[float] = field(default_factory=list)
    opened_at: float = 0.0
    probing: bool = False
    last_error: str | None = None
    transitions: Counter[str] = field(default_factory=Counter)  # to-state -> count
    _incident: BaseException | None = field(default=None, repr=False)  # the last counted

    def _to(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.transitions[state] += 1

    def retry_in(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return max(0.0, self.opened_at + self.cooldown - now)

    def before(self) -> bool:
        """Let a request through, or raise Unavailable. True when it is the probe."""
        if self.state == "closed":
            return False
        now = time.monotonic()
        if self.state == "open" and self.retry_in(now) <= 0:
            self._to("half_open")
        if self.state == "half_open" and not self.probing:
            self.probing = True
            return True
        wait = max(1, int(self.retry_in(now) + 0.999))
        raise Unavailable(
            f"model {self.name!r} is failing and its circuit is open (last error: "
            f"{self.last_error}); retry in {wait}s",
            retry_after=wait,
            code="circuit_open",
        )

    def success(self, probe: bool) -> None:
        if probe:
            self.probing = False
            self.failures.clear()
            self._to("closed")

    def failure(self, probe: bool, exc: BaseException) -> None:
        now = time.monotonic()
        self.last_error = getattr(exc, "message", str(exc))
        # One incident fails every request it touched with the same error (a crash fails
        # all of the worker's in-flight requests at once): it counts once.
        if exc is self._incident and not probe:
            return
        self._incident = exc
        if probe or self.state == "half_open":
            self.probing = False
            self.opened_at = now
            self._to("open")
            return
        self.failures = [t for t in self.failures if now - t < self.window] + [now]
        if self.state == "closed" and len(self.failures) >= self.threshold:
            self.opened_at = now
            self._to("open")

    def no_verdict(self, probe: bool) -> None:
        """The request ended without telling (its client left): free the probe."""
        if probe:
            self.probing = False

    def as_dict(self) -> dict[str, Any]:
        now = time.monotonic()
        recent = [t for t in self.failures if now - t < self.window]
        return {
            "state": self.state,
            "recent_failures": len(recent),
            "retry_in_s": round(self.retry_in(now), 3) if self.state == "open" else None,
            "last_error": self.last_error,
        }
