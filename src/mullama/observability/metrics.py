"""Prometheus metrics: one CollectorRegistry per app (no module-level state).

Counters and histograms are updated as things happen (requests end, tokens arrive, the
worker admits a sequence). Gauges that describe the present (active requests, queue depth,
KV cache use, memory, tokens per second) are read at scrape time from a snapshot callback,
so they are never stale. Label values are bounded: endpoint is a route template, model is
one of the configured models, status is an HTTP status code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..models.breaker import STATES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
KV_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Distinct names of fields the clients made up (not declared by an API) that get a series
# of their own in mullama_ignored_fields_total; later ones are counted as "(other)".
MAX_UNDECLARED_FIELDS = 100


@dataclass
class ModelSnapshot:
    name: str
    loaded: bool
    active: int = 0
    queued: int = 0
    kv_used: int = 0
    kv_size: int = 0
    memory_bytes: int = 0
    tokens_per_second: float = 0.0
    threads: int = 0
    circuit: str = "closed"
    circuit_transitions: dict[str, int] = field(default_factory=dict)
    kv_cache: Any = None  # the worker's last CacheReport (engine/protocol.py)


@dataclass
class Snapshot:
    uptime: float
    active_requests: int
    daemon_memory_bytes: int
    version: str
    models: list[ModelSnapshot] = field(default_factory=list)
    cache: Any = None  # the response cache (models/cache.py), when it is on
    remotes: list[Any] = field(default_factory=list)  # RemoteModels (models/remote.py)


class _LiveCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot()

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        info = gauge("mullama_build_info", "Mullama version (always 1).", ("version",))
        info.add_metric([snap.version], 1)
        uptime = gauge("mullama_uptime_seconds", "Seconds since the daemon started.")
        uptime.add_metric([], snap.uptime)
        active = gauge("mullama_requests_active", "API requests being served now.")
        active.add_metric([], snap.active_requests)
        n_loaded = gauge("mullama_models_loaded", "Models with a running engine worker.")
        n_loaded.add_metric([], sum(m.loaded for m in snap.models))
        loaded = gauge("mullama_model_loaded", "1 if the model's worker runs, else 0.", ("model",))
        memory = gauge(
            "mullama_memory_used_bytes",
            "Resident memory: the daemon (component=daemon) and each model's worker.",
            ("component", "model"),
        )
        memory.add_metric(["daemon", ""], snap.daemon_memory_bytes)
        tps = gauge(
            "mullama_tokens_per_second", "Tokens generated per second, last 10 s.", ("model",)
        )
        depth = gauge("mullama_queue_depth", "Sequences waiting for a slot.", ("model",))
        seqs = gauge("mullama_sequences_active", "Sequences holding a slot.", ("model",))
        kv = gauge("mullama_kv_cache_usage_ratio", "Share of the KV cache in use.", ("model",))
        threads = gauge(
            "mullama_engine_threads",
            "Decode threads of the model's last step (its share of the CPUs while other "
            "engines decode too).",
            ("model",),
        )
        circuit = gauge(
            "mullama_circuit_state",
            "The model's circuit breaker: 0 closed, 1 half-open (probing), 2 open.",
            ("model",),
        )
        transitions = CounterMetricFamily(
            "mullama_circuit_transitions",
            "Circuit breaker state changes, by the state entered.",
            labels=["model", "state"],
        )
        for m in snap.models:
            circuit.add_metric([m.name], STATES.index(m.circuit))
            for state, n in m.circuit_transitions.items():
                transitions.add_metric([m.name, state], n)
            loaded.add_metric([m.name], 1 if m.loaded else 0)
            memory.add_metric(["worker", m.name], m.memory_bytes)
            tps.add_metric([m.name], m.tokens_per_second)
            depth.add_metric([m.name], m.queued)
            seqs.add_metric([m.name], m.active)
            kv.add_metric([m.name], m.kv_used / m.kv_size if m.kv_size else 0.0)
            if m.loaded:
                threads.add_metric([m.name], m.threads)
        return [info, uptime, active, n_loaded, loaded, memory, tps, depth, seqs, kv, threads,
                circuit, transitions, *_kv_host_metrics(snap.models),
                *_cache_metrics(snap.cache), *_remote_metrics(snap.remotes)]  # fmt: skip


def _kv_host_metrics(models: list[ModelSnapshot]) -> list[Metric]:
    """Each loaded model's host-RAM cache of KV states (--cache-ram)."""
    size = GaugeMetricFamily("mullama_kv_host_cache_bytes",
                             "Bytes of KV states the model's host-RAM cache holds.", labels=["model"])  # fmt: skip
    entries = GaugeMetricFamily("mullama_kv_host_cache_entries",
                                "Conversations the model's host-RAM cache holds.", labels=["model"])  # fmt: skip
    counters = {
        "ram_hits": ("mullama_kv_host_cache_hits", "Saved KV states restored into a slot."),
        "ram_misses": ("mullama_kv_host_cache_misses",
                       "Admissions for which the host-RAM cache held nothing shared."),
        "ram_saves": ("mullama_kv_host_cache_saves", "Slot histories saved before a slot was reused."),
        "ram_evictions": ("mullama_kv_host_cache_evictions",
                          "Saved states dropped to stay within --cache-ram."),
        "ram_failed": ("mullama_kv_host_cache_failed_restores",
                       "Restores that did not hold what they should (dropped, recomputed)."),
        "moves": ("mullama_kv_sequence_moves",
                  "Running sequences moved to close a gap in the slot ids (a whole KV "
                  "stream copied: consecutive ids decode in one micro-batch)."),
        "preemptions": ("mullama_preemptions",
                        "Answers paused (their KV saved to RAM, resumed at the next free "
                        "slot) so that a short request could start (--preempt-after)."),
    }  # fmt: skip
    fams = {k: CounterMetricFamily(n, d, labels=["model"]) for k, (n, d) in counters.items()}
    for m in models:
        if m.kv_cache is None:
            continue
        size.add_metric([m.name], m.kv_cache.ram_bytes)
        entries.add_metric([m.name], m.kv_cache.ram_entries)
        for key, fam in fams.items():
            fam.add_metric([m.name], getattr(m.kv_cache, key))
    return [size, entries, *fams.values()]


def _remote_metrics(remotes: list[Any]) -> list[Metric]:
    """Each remote model's replicas: in flight now, and up (1) or taken out (0)."""
    labels = ["model", "replica"]
    inflight = GaugeMetricFamily(
        "mullama_remote_in_flight", "Requests in flight on a remote model's replica.", labels=labels
    )
    up = GaugeMetricFamily("mullama_remote_replica_up",
                           "1 while a remote model's replica is in service, 0 while it is "
                           "taken out (failed its health checks).", labels=labels)  # fmt: skip
    queued = GaugeMetricFamily(
        "mullama_remote_queued", "Requests waiting for a remote model's replica.", labels=["model"]
    )
    for remote in remotes:
        queued.add_metric([remote.name], remote.waiting)
        for r in remote.replicas:
            inflight.add_metric([remote.name, r.label], r.inflight)
            up.add_metric([remote.name, r.label], 1 if r.healthy else 0)
    return [inflight, up, queued]


def _cache_metrics(cache: Any) -> list[Metric]:
    """The response cache's counters (hits and misses by model), and for the in-process
    cache its size; a Redis cache's memory and evictions are Redis's own (INFO)."""
    if cache is None:
        return []
    st = cache.stats
    backend = cache.kind
    hits = CounterMetricFamily(
        "mullama_response_cache_hits", "Generations answered from the response cache.",
        labels=["model", "backend"],
    )  # fmt: skip
    misses = CounterMetricFamily(
        "mullama_response_cache_misses",
        "Cacheable generations the cache did not hold (computed, then stored).",
        labels=["model", "backend"],
    )
    for model, n in st.hits.items():
        hits.add_metric([model, backend], n)
    for model, n in st.misses.items():
        misses.add_metric([model, backend], n)
    out: list[Metric] = [hits, misses]
    for name, doc, value in (
        ("mullama_response_cache_stores", "Answers stored in the response cache.", st.stores),
        ("mullama_response_cache_evictions",
         "Entries the in-process cache dropped to stay within its size.", st.evictions),
        ("mullama_response_cache_errors",
         "Cache operations that failed (Redis unreachable): each bypassed the cache.",
         st.errors),
    ):  # fmt: skip
        fam = CounterMetricFamily(name, doc, labels=["backend"])
        fam.add_metric([backend], value)
        out.append(fam)
    if backend == "memory":
        size = GaugeMetricFamily(
            "mullama_response_cache_bytes", "Bytes the in-process response cache holds."
        )
        size.add_metric([], st.bytes)
        entries = GaugeMetricFamily(
            "mullama_response_cache_entries", "Entries the in-process response cache holds."
        )
        entries.add_metric([], st.entries)
        out += [size, entries]
    return out


class Metrics:
    """Every instrument of one daemon, registered in its own registry."""

    def __init__(self, snapshot: Callable[[], Snapshot], models: Iterable[str] = ()) -> None:
        self.registry = r = CollectorRegistry()
        self._add_latencies(r)
        self._add_token_counters(r)
        self._add_engine_timings(r)
        self._add_routing_counters(r)
        self._undeclared: set[str] = set()
        for name in models:
            self._precreate(name)
        r.register(_LiveCollector(snapshot))
        self._add_remote_metrics(r)

    def _add_latencies(self, r: CollectorRegistry) -> None:
        """Requests by route, model and status, and their durations; time to the first
        token and between tokens."""
        self.requests = Counter(
            "mullama_requests",
            "HTTP requests served, by route template, model and status code.",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "mullama_request_duration_seconds",
            "Time from request start to the last byte of the response.",
            ["endpoint", "model", "status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "mullama_time_to_first_token_seconds",
            "Time from request start to the first generated token of each sequence.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "mullama_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a sequence.",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )

    def _add_token_counters(self, r: CollectorRegistry) -> None:
        """Prompt tokens (reused from the KV cache or computed) and generated tokens."""
        self.prompt_tokens = Counter(
            "mullama_prompt_tokens", "Prompt tokens of accepted sequences.", ["model"], registry=r
        )
        self.generated_tokens = Counter(
            "mullama_generated_tokens", "Tokens generated.", ["model"], registry=r
        )
        self.prompt_tokens_reused = Counter(
            "mullama_prompt_tokens_reused",
            "Prompt tokens found in the KV cache at admission (a slot's prefix, a copied "
            "prefix or a state restored from host RAM): not computed.",
            ["model"],
            registry=r,
        )
        self.prompt_tokens_computed = Counter(
            "mullama_prompt_tokens_computed",
            "Prompt tokens the engine computed (prompt tokens less those reused).",
            ["model"],
            registry=r,
        )

    def _add_engine_timings(self, r: CollectorRegistry) -> None:
        """KV state saves and restores, queue waits, model loads."""
        self.kv_save = Histogram(
            "mullama_kv_state_save_seconds",
            "Time to save a slot's KV state to host RAM (on the decode thread, between steps).",
            ["model"],
            buckets=KV_BUCKETS,
            registry=r,
        )
        self.kv_restore = Histogram(
            "mullama_kv_state_restore_seconds",
            "Time to restore a saved KV state into a slot (on the decode thread).",
            ["model"],
            buckets=KV_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "mullama_queue_wait_seconds",
            "Time a sequence waited in the engine's queue for a slot.",
            ["model"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.model_load = Histogram(
            "mullama_model_load_seconds",
            "Time to start a model's engine worker (successful loads).",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )

    def _add_routing_counters(self, r: CollectorRegistry) -> None:
        """Fallbacks, failed loads and the fields requests carried that were ignored."""
        self.fallbacks = Counter(
            "mullama_fallbacks",
            "Requests answered by a fallback model because their model could not take "
            "them, by the model asked for and the one that answered.",
            ["model", "fallback"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "mullama_model_load_failures", "Model loads that failed.", ["model"], registry=r
        )
        self.ignored_fields = Counter(
            "mullama_ignored_fields",
            "Requests with a field accepted and not acted on (a hint, a no-op here, an "
            "unknown field: the Mullama-Ignored-Fields header), by API and field.",
            ["api", "field"],
            registry=r,
        )

    def _add_remote_metrics(self, r: CollectorRegistry) -> None:
        """Requests, first tokens and tokens of remote models' replicas."""
        self.remote_requests = Counter(
            "mullama_remote_requests",
            "Requests sent to a remote model's replica, by outcome (ok, error, cancelled, reconnect, "
            "connect_error, or the upstream's HTTP status).",
            ["model", "replica", "outcome"],
            registry=r,
        )
        self.remote_ttft = Histogram(
            "mullama_remote_time_to_first_token_seconds",
            "Time from sending a request to a remote replica to its first token.",
            ["model", "replica"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.remote_tokens = Counter(
            "mullama_remote_generated_tokens",
            "Tokens (stream pieces) a remote model's replica generated.",
            ["model", "replica"],
            registry=r,
        )

    def _precreate(self, model: str) -> None:
        """Per-model series exist (at 0) from the start, so rate() works at once."""
        for per_model in (
            self.ttft,
            self.itl,
            self.prompt_tokens,
            self.prompt_tokens_reused,
            self.prompt_tokens_computed,
            self.generated_tokens,
            self.queue_wait,
            self.model_load,
            self.model_load_failures,
        ):
            per_model.labels(model)

    def ignored(self, api: str, fields: Mapping[str, bool]) -> None:
        """Count a request's ignored fields (name -> declared by the API). Names the
        clients made up are client-chosen label values: the first MAX_UNDECLARED_FIELDS
        get a series each, the others share "(other)"."""
        for name, declared in fields.items():
            if not declared and name not in self._undeclared:
                if len(self._undeclared) >= MAX_UNDECLARED_FIELDS:
                    name = "(other)"
                else:
                    self._undeclared.add(name)
            self.ignored_fields.labels(api, name).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
