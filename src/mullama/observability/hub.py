"""The daemon's observability hub: one per app. It is the engine observer (the engine
client calls it as generations progress), it closes each request (metrics, per-model
summary, access log line, span) and it answers snapshots for gauges and status pages."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from .. import __version__, requestctx
from ..errors import MullamaError
from ..requestctx import RequestContext
from .metrics import Metrics, ModelSnapshot, Snapshot
from .requests import ModelSummary, RateMeter, percentile
from .tracing import Tracing

access_log = logging.getLogger("mullama.access")

HISTORY_STEP = 2.0  # seconds between the dashboard's history samples
HISTORY_POINTS = 150  # five minutes of them

if TYPE_CHECKING:
    from ..models.manager import ModelManager


def rss_bytes(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _ns(record: RequestContext, t: float) -> int:
    """A perf_counter time as wall-clock nanoseconds (for spans)."""
    return record.started_ns + int((t - record.started) * 1e9)


class GenerationTracker:
    """One sequence: feeds token counters, TTFT/ITL/queue histograms, the request's context
    and (with tracing) queue/prefill/decode spans."""

    def __init__(self, hub: Observability, model: str, record: RequestContext | None) -> None:
        m = hub.metrics
        self.hub = hub
        self.model = model
        self.record = record
        self.started = time.perf_counter()
        self.admitted_at: float | None = None
        self.queue_wait = 0.0
        self.first: float | None = None
        self.last = 0.0
        self.n = 0
        self.prompt = 0
        self.finish: str | None = None
        self._itl = m.itl.labels(model)
        self._generated = m.generated_tokens.labels(model)
        self._rate = hub.rates.setdefault(model, RateMeter())
        if record is not None:
            record.model = model

    def accepted(self, prompt_tokens: int) -> None:
        self.prompt = prompt_tokens
        self.hub.metrics.prompt_tokens.labels(self.model).inc(prompt_tokens)
        if self.record is not None:
            self.record.prompt_tokens += prompt_tokens

    def admitted(self, queue_wait: float, reused: int = 0) -> None:
        self.admitted_at = time.perf_counter()
        self.queue_wait = max(queue_wait, 0.0)
        m = self.hub.metrics
        m.queue_wait.labels(self.model).observe(self.queue_wait)
        m.prompt_tokens_reused.labels(self.model).inc(reused)
        m.prompt_tokens_computed.labels(self.model).inc(max(self.prompt - reused, 0))
        if self.record is not None:
            self.record.cached_tokens += reused

    def output(self, n_generated: int, finish: str | None) -> None:
        now = time.perf_counter()
        if finish is not None:
            self.finish = finish
        if self.first is None:
            self.first = now
            rec = self.record
            start = rec.started if rec is not None else self.started
            self.hub.metrics.ttft.labels(self.model).observe(now - start)
            if rec is not None and (rec.first_token is None or now < rec.first_token):
                rec.first_token = now
            new = n_generated
        else:
            new = n_generated - self.n
            if new > 0:
                # Tokens that arrive together (text held back for a stop string) share
                # the gap: one observation per token.
                gap = (now - self.last) / new
                for _ in range(new):
                    self._itl.observe(gap)
        if new > 0:
            self.last = now
            self.n = n_generated
            self._generated.inc(new)
            self._rate.add(new)
            self.hub.tokens_generated += new

    def closed(self, error: BaseException | None) -> None:
        rec = self.record
        if rec is None:
            return
        rec.completion_tokens += self.n
        if isinstance(error, MullamaError):
            rec.error = True
            rec.finish_reasons.append("error")
        elif self.finish is not None:
            rec.finish_reasons.append(self.finish)
        tracing = self.hub.tracing
        if tracing is not None and rec.span is not None:
            self._spans(tracing, rec, time.perf_counter())

    def _spans(self, tracing: Tracing, rec: RequestContext, end: float) -> None:
        attrs = {"gen_ai.request.model": self.model}
        if self.admitted_at is not None:
            queued = self.admitted_at - self.queue_wait
            tracing.child(rec.span, "queue", _ns(rec, queued), _ns(rec, self.admitted_at), **attrs)
            first = self.first if self.first is not None else end
            tracing.child(rec.span, "prefill", _ns(rec, self.admitted_at), _ns(rec, first), **attrs)
        if self.first is not None:
            tracing.child(
                rec.span,
                "decode",
                _ns(rec, self.first),
                _ns(rec, end),
                **attrs,
                **{"gen_ai.usage.output_tokens": self.n},
            )


class Observability:
    def __init__(self, models: ModelManager, tracing: Tracing | None = None) -> None:
        self.models = models  # ModelManager: names, clients()
        self.tracing = tracing
        self.started = time.time()
        names = [*models.names, *models.remotes]
        self.rates: dict[str, RateMeter] = {name: RateMeter() for name in names}
        self.summaries: dict[str, ModelSummary] = {name: ModelSummary() for name in names}
        self.active_requests = 0
        self.total_requests = 0
        self.failed_requests = 0
        self.tokens_generated = 0
        # Failed API requests by status ("stream": cut after a 200 began).
        self.errors: Counter[str] = Counter()
        # The last requests that reached a model: (time to first token or None, duration).
        self.recent: deque[tuple[float | None, float]] = deque(maxlen=1000)
        # (wall time, total requests, tokens generated) every HISTORY_STEP seconds, for
        # the dashboard's charts; sampled by sample_history (a background task).
        self.history: deque[tuple[float, int, int]] = deque(maxlen=HISTORY_POINTS + 1)
        self.metrics = Metrics(self.snapshot, names)

    def prompt_tokens(self) -> dict[str, int]:
        """Prompt tokens found in the KV caches and computed, all models: the counters'
        own totals."""
        m = self.metrics
        return {
            "reused": _total(m.prompt_tokens_reused),
            "computed": _total(m.prompt_tokens_computed),
        }

    # ---- EngineObserver --------------------------------------------------------------

    def generation(self, model: str, request_id: str) -> GenerationTracker:
        return GenerationTracker(self, model, requestctx.current.get())

    def replica_request(
        self, model: str, replica: str, outcome: str, ttft: float | None, tokens: int
    ) -> None:
        m = self.metrics
        m.remote_requests.labels(model, replica, outcome).inc()
        if ttft is not None:
            m.remote_ttft.labels(model, replica).observe(ttft)
        if tokens:
            m.remote_tokens.labels(model, replica).inc(tokens)

    def embedded(self, model: str, prompt_tokens: int) -> None:
        self.metrics.prompt_tokens.labels(model).inc(prompt_tokens)
        rec = requestctx.current.get()
        if rec is not None:
            rec.model = model
            rec.prompt_tokens += prompt_tokens

    def kv_cache(self, model: str, report: Any) -> None:
        m = self.metrics
        for s in report.save_seconds:
            m.kv_save.labels(model).observe(s)
        for s in report.restore_seconds:
            m.kv_restore.labels(model).observe(s)

    def loaded(self, model: str, seconds: float, error: BaseException | None) -> None:
        if error is None:
            self.metrics.model_load.labels(model).observe(seconds)
        else:
            self.metrics.model_load_failures.labels(model).inc()

    # ---- requests ----------------------------------------------------------------------

    def start_request(self, rec: RequestContext) -> None:
        """Count a request as active and open its span (not for probes, scrapes and the
        UI's files)."""
        if rec.monitoring:
            return
        self.active_requests += 1
        if self.tracing is not None:
            rec.span = self.tracing.start_request(
                rec.method, rec.path, rec.request_id, rec.started_ns
            )

    def finish_request(self, rec: RequestContext, status: int, route: str | None) -> None:
        ended = time.perf_counter()
        duration = ended - rec.started
        endpoint = route or "unmatched"
        model = rec.model or ""
        m = self.metrics
        m.requests.labels(endpoint, model, str(status)).inc()
        m.request_duration.labels(endpoint, model, str(status)).observe(duration)
        ok = status < 400 and not rec.error
        if not rec.monitoring:
            self.active_requests -= 1
            self.total_requests += 1
            self.failed_requests += not ok
            if not ok:
                self.errors[str(status) if status >= 400 else "stream"] += 1
            if rec.model:
                self.recent.append((rec.ttft, duration))
        if rec.model:  # models loaded on demand get their summary on first use
            self.summaries.setdefault(rec.model, ModelSummary()).add(rec, ok, ended)
        if rec.span is not None and self.tracing is not None:
            self.tracing.end_request(
                rec.span, route=route, status=status, record=rec, end_ns=_ns(rec, ended)
            )
        self._log_access(rec, status, duration)

    def _log_access(self, rec: RequestContext, status: int, duration: float) -> None:
        level = logging.DEBUG if rec.monitoring else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        ttft = rec.ttft
        fields = {
            "request_id": rec.request_id,
            "method": rec.method,
            "path": rec.path,
            "status": status,
            "model": rec.model,
            "prompt_tokens": rec.prompt_tokens,
            "completion_tokens": rec.completion_tokens,
            "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
            "duration_ms": round(duration * 1000, 3),
            "client": rec.client,
        }
        if rec.error:
            fields["error"] = True
        access_log.log(level, "%s %s %d", rec.method, rec.path, status, extra={"fields": fields})

    # ---- the dashboard's history -------------------------------------------------------

    def sample(self, now: float | None = None) -> None:
        self.history.append((time.time() if now is None else now, self.total_requests,
                             self.tokens_generated))  # fmt: skip

    async def sample_history(self) -> None:
        """Every HISTORY_STEP seconds, for as long as the daemon runs."""
        while True:
            self.sample()
            await asyncio.sleep(HISTORY_STEP)

    def history_rates(self) -> dict[str, Any]:
        """Requests and tokens per second over the sampled history, oldest first."""
        points = list(self.history)
        pairs = list(zip(points, points[1:], strict=False))
        return {
            "step_secs": HISTORY_STEP,
            "requests_per_second": [round((b[1] - a[1]) / (b[0] - a[0]), 3) for a, b in pairs],
            "tokens_per_second": [round((b[2] - a[2]) / (b[0] - a[0]), 3) for a, b in pairs],
        }

    def latency(self) -> dict[str, float | None]:
        """TTFT and whole-request latency percentiles over the last requests, in ms."""
        ttfts = [t for t, _ in self.recent if t is not None]
        durations = [d for _, d in self.recent]
        out: dict[str, float | None] = {}
        for label, values in (("ttft", ttfts), ("latency", durations)):
            for q in (50, 95):
                v = percentile(values, q)
                out[f"{label}_p{q}_ms"] = None if v is None else round(v * 1000, 3)
        return out

    # ---- snapshots -----------------------------------------------------------------------

    def uptime(self) -> float:
        return time.time() - self.started

    def model_snapshots(self) -> list[ModelSnapshot]:
        out = []
        circuits = self.models.circuits()
        for c in self.models.clients():
            alive = c.alive
            breaker = circuits.get(c.name)
            st = c.stats()
            rate = self.rates.get(c.name)
            out.append(
                ModelSnapshot(
                    name=c.name,
                    loaded=alive,
                    active=st.active if alive else 0,
                    queued=st.queued if alive else 0,
                    kv_used=st.kv_used if alive else 0,
                    kv_size=st.kv_size,
                    memory_bytes=rss_bytes(c.pid) if alive else 0,
                    tokens_per_second=rate.rate() if rate is not None else 0.0,
                    threads=st.threads if alive else 0,
                    circuit=breaker.state if breaker is not None else "closed",
                    circuit_transitions=dict(breaker.transitions) if breaker else {},
                    kv_cache=st.cache if alive else None,
                )
            )
        return out

    def snapshot(self) -> Snapshot:
        return Snapshot(
            uptime=self.uptime(),
            active_requests=self.active_requests,
            daemon_memory_bytes=rss_bytes(os.getpid()),
            version=__version__,
            models=self.model_snapshots(),
            cache=self.models.cache,
            remotes=list(self.models.remotes.values()),
        )

    def stats(self) -> dict[str, int]:
        return {
            "active_requests": self.active_requests,
            "queued_requests": sum(c.stats().queued for c in self.models.clients() if c.alive),
            "total_requests": self.total_requests,
            "failed_requests": self.failed_requests,
            "tokens_generated": self.tokens_generated,
        }

    def completion_metrics(self) -> dict[str, Any]:
        return {
            "object": "completion_metrics",
            "uptime_secs": round(self.uptime(), 3),
            "models": {name: s.to_json() for name, s in self.summaries.items()},
        }


def _total(counter: Any) -> int:
    """A labelled counter's sum over its labels."""
    return int(
        sum(s.value for f in counter.collect() for s in f.samples if s.name.endswith("_total"))
    )
